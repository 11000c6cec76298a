"""A validating kernel command line: refuses bad items and stays unchanged when it does."""
from __future__ import annotations

from launcher.loader.errors import CmdlineInvalid, CmdlineTooLong

# x86 COMMAND_LINE_SIZE; the boot header's cmdline_size may say otherwise.
DEFAULT_CAPACITY = 2048


class Cmdline:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise CmdlineInvalid(f"command line capacity {capacity} leaves no room for the NUL terminator")
        self.capacity = capacity
        self._items: list[str] = []

    def _check(self, items: list[str]) -> None:
        for item in items:
            if "\0" in item:
                raise CmdlineInvalid(f"command line item {item!r} contains a NUL byte")
            if not item.strip():
                raise CmdlineInvalid("command line items must not be empty or blank")
        length = len(" ".join(items).encode())
        if length + 1 > self.capacity:
            raise CmdlineTooLong(
                f"command line of {length} bytes plus NUL exceeds the limit of {self.capacity} bytes")

    def insert_str(self, text: str) -> None:
        """Append free text (e.g. the user's kernel arguments), validated as a whole."""
        self._extend([text])

    def insert(self, key: str, value: str | None = None) -> None:
        if not key or any(c.isspace() or c == "=" for c in key):
            raise CmdlineInvalid(f"command line key {key!r} must be non-empty without spaces or '='")
        if value is not None and any(c.isspace() for c in value):
            raise CmdlineInvalid(f"command line value {value!r} for {key} must not contain spaces")
        self._extend([key if value is None else f"{key}={value}"])

    def add_virtio_mmio_device(self, size: int, base: int, irq: int) -> None:
        """virtio_mmio.device=<size>@<base>:<irq> (drivers/virtio/virtio_mmio.c)."""
        if size <= 0 or base < 0 or irq < 0:
            raise CmdlineInvalid(f"virtio-mmio device size {size:#x} base {base:#x} irq {irq} must be positive")
        self.insert("virtio_mmio.device", f"{size:#x}@{base:#x}:{irq}")

    def _extend(self, new: list[str]) -> None:
        candidate = self._items + new
        self._check(candidate)  # raises before self changes
        self._items = candidate

    def has(self, key: str) -> bool:
        return any(w == key or w.startswith(key + "=") for item in self._items for w in item.split())

    def __str__(self) -> str:
        return " ".join(self._items)

    def as_bytes(self) -> bytes:
        """NUL-terminated, as the kernel reads it through cmd_line_ptr."""
        return str(self).encode() + b"\0"
