"""Kernel symbol lookup from a System.map, for readable crash reports."""
from __future__ import annotations

import bisect
from pathlib import Path


def beside(kernel: Path, stem: str) -> list[Path]:
    """Where a file about kernel lives: <stem>-<release> for vmlinuz-<release>, then <stem>."""
    kernel = Path(kernel)
    candidates = [kernel.parent / stem]
    for prefix in ("vmlinuz-", "vmlinux-", "bzImage-"):
        if kernel.name.startswith(prefix):
            candidates.insert(0, kernel.parent / f"{stem}-{kernel.name[len(prefix):]}")
    return candidates


class SystemMap:
    def __init__(self, entries: list[tuple[int, str]]):
        entries.sort()
        self._addrs = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    @classmethod
    def read(cls, path: Path) -> "SystemMap":
        return cls.parse(path.read_text(errors="replace"))

    @classmethod
    def parse(cls, text: str) -> "SystemMap":
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwWaA" and len(parts[1]) == 1:
                try:
                    entries.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        return cls(entries)

    @classmethod
    def beside(cls, kernel: Path) -> "SystemMap | None":
        """The System.map next to a kernel image (System.map, or System.map-<release> for
        vmlinuz-<release>), read when first asked (a restored guest may never ask)."""
        for path in beside(kernel, "System.map"):
            if path.is_file():
                return LazySystemMap(path)
        return None

    def has(self, name: str) -> bool:
        """A text symbol of that name is in the map."""
        return name in self._names

    def lookup(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        offset = addr - self._addrs[i]
        if offset > 0x100000:  # far past the last symbol: not in the kernel text
            return None
        return f"{self._names[i]}+{offset:#x}"


class LazySystemMap(SystemMap):
    """A System.map parsed on first use (~30,000 symbols: 40 ms and megabytes per launcher)."""

    def __init__(self, path: Path):
        self._path = path

    def __getattr__(self, name: str):
        if name not in ("_addrs", "_names"):
            raise AttributeError(name)
        try:
            loaded = SystemMap.read(self._path)
        except OSError:
            loaded = SystemMap([])
        self._addrs, self._names = loaded._addrs, loaded._names
        return getattr(self, name)
