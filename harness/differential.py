"""Differential runs: the same guest on two backends (our kvm and QEMU, the reference VMM, by
default), the commands a test names run on both and compared; the first difference fails the
test with a readable diff, and both guests' consoles are attached to its report (the plugin
attaches every guest of a failing test).

    @pytest.mark.differential(block=[b"data", 16], rng=True)    # guest options, as @pytest.mark.guest's
    def test_reads(differential):
        differential.run("sha256sum /dev/vda")      # the same stdout, stderr and status on both
        differential.disks["qemu"][0]               # each backend's own copy of each disk

`block=` items: bytes (an image holding them, 16 MiB), an int (a blank image of that many MiB)
or a Path (copied); each backend gets its own copy, so one side's writes never reach the other.
`--guest-differential A,B` picks the pair for a whole run.
"""
from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness import disks as disk_images
from harness.console import CommandResult, Guest

DEFAULT_PAIR = ("kvm", "qemu")
COMPARED = ("status", "stdout", "stderr")
DIFF_LINES = 40


class DifferentialMismatch(AssertionError):
    """Two backends' guests answered a command differently."""


@dataclass
class Differential:
    guests: dict[str, Guest]                # backend -> its guest, the reference last
    disks: dict[str, list[Path]] = field(default_factory=dict)
    agreed: list[str] = field(default_factory=list)

    def run(self, command: str, timeout: float = 300, input: str | bytes | None = None,
            compare: tuple[str, ...] = COMPARED) -> CommandResult:
        """Run command on every backend; the first's result when they agree on compare."""
        results = [(backend, guest.run(command, timeout=timeout, input=input))
                   for backend, guest in self.guests.items()]
        first = results[0]
        for other in results[1:]:
            difference = describe(command, first, other, compare, len(self.agreed))
            if difference:
                raise DifferentialMismatch(difference)
        self.agreed.append(command)
        return first[1]


def describe(command: str, one: tuple[str, CommandResult], other: tuple[str, CommandResult],
             compare: tuple[str, ...] = COMPARED, agreed: int = 0) -> str | None:
    """A readable account of how two results differ, or None when they agree on compare."""
    (a, ra), (b, rb) = one, other
    parts = []
    if "status" in compare and ra.status != rb.status:
        parts.append(f"exit status: {a} {ra.status}, {b} {rb.status}")
    for stream in ("stdout", "stderr"):
        left, right = _bytes(ra, stream), _bytes(rb, stream)
        if stream in compare and left != right:
            parts.append(f"{stream} differs (--- {a}, +++ {b}):\n" + _diff(left, right, a, b))
    if not parts:
        return None
    return (f"differential run: `{command}` differs between {a} and {b} "
            f"(after {agreed} command(s) that agreed)\n" + "\n".join(parts))


def _bytes(result: CommandResult, stream: str) -> bytes:
    if stream == "stderr":
        return result.stderr_bytes
    return result.stdout_bytes if result.stdout_bytes is not None else result.output.encode()


def _diff(left: bytes, right: bytes, a: str, b: str) -> str:
    """Lines as text (escapes for what is not printable), and where the bytes first differ."""
    at = next((i for i, (x, y) in enumerate(zip(left, right)) if x != y), min(len(left), len(right)))
    lines = difflib.unified_diff(_lines(left), _lines(right), a, b, n=1, lineterm="")
    shown = list(lines)
    cut = len(shown) - DIFF_LINES
    body = "\n".join(shown[:DIFF_LINES]) + (f"\n... {cut} more diff lines" if cut > 0 else "")
    return (f"{body}\n  first difference at byte {at} "
            f"({a}: {left[at:at + 8].hex(' ') or 'end'}; {b}: {right[at:at + 8].hex(' ') or 'end'}); "
            f"lengths {a} {len(left)}, {b} {len(right)}")


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09}   # shown, never sent to a terminal


def _lines(data: bytes) -> list[str]:
    return [line.decode("utf-8", "backslashreplace").translate(_CONTROLS) for line in data.split(b"\n")]


def make_disk(item, path: Path) -> Path:
    """One backend's copy of a marker's block= item."""
    if isinstance(item, Path):
        shutil.copyfile(item, path)
        return path
    if isinstance(item, int) and not isinstance(item, bool):
        return disk_images.raw_image(path, item)
    if isinstance(item, (bytes, bytearray)):
        return disk_images.raw_image(path, 16, bytes(item))
    raise TypeError(f"differential block= item {item!r}: give bytes, a size in MiB or a Path")
