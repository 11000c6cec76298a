"""Watch guest console output for the lines that mean the guest is ending.

With no ACPI, `poweroff -f` ends in `hlt` and, with KVM's in-kernel irqchip, KVM_RUN
then just blocks: the console line the kernel prints first is the only sign.  The
watcher also keeps the console's tail for error reports.
"""
from __future__ import annotations

import enum
import re
import time


class ConsoleEvent(enum.Enum):
    POWER_OFF = "power off"
    HALTED = "halted"
    RESTART = "restart"
    PANIC = "panic"


PATTERNS = (
    (re.compile(rb"reboot: Power down"), ConsoleEvent.POWER_OFF),
    (re.compile(rb"System halted"), ConsoleEvent.HALTED),
    (re.compile(rb"reboot: Restarting system"), ConsoleEvent.RESTART),
    (re.compile(rb"Kernel panic - not syncing"), ConsoleEvent.PANIC),
)
TAIL_BYTES = 16 * 1024
LINE_LIMIT = 4096  # a line longer than this is checked and dropped, never buffered forever


class ConsoleWatcher:
    def __init__(self):
        self._line = bytearray()
        self._tail = bytearray()
        self.events: list[ConsoleEvent] = []
        self.panic_line: str | None = None

    def feed(self, data: bytes) -> list[ConsoleEvent]:
        """Returns the events completed by this data (a line is complete at '\\n')."""
        self._tail += data
        del self._tail[:-TAIL_BYTES]
        found = []
        for byte in data:
            if byte == 0x0A or len(self._line) >= LINE_LIMIT:
                found.extend(self._line_done(bytes(self._line)))
                self._line.clear()
            elif byte != 0x0D:
                self._line.append(byte)
        return found

    def _line_done(self, line: bytes) -> list[ConsoleEvent]:
        hits = [event for pattern, event in PATTERNS if pattern.search(line)]
        if ConsoleEvent.PANIC in hits and self.panic_line is None:
            self.panic_line = line.decode(errors="replace").strip()
        self.events.extend(hits)
        return hits

    def seen(self, event: ConsoleEvent) -> bool:
        return event in self.events

    def tail(self, lines: int = 20) -> str:
        text = self._tail.decode(errors="replace").replace("\r", "")
        return "\n".join(text.rstrip("\n").split("\n")[-lines:])


class MarkerClock:
    """Notes when a marker first shows up in console output (which may split it across writes):
    seconds since `started`, and seconds inside the hypervisor by then."""

    def __init__(self, marker: str | None, started: float):
        self.marker = marker.encode() if marker else None
        self.started = started
        self._window = b""
        self.seen_at: float | None = None
        self.in_run_at: float | None = None

    def feed(self, data: bytes, seconds_in_run) -> None:
        if self.marker is None or self.seen_at is not None:
            return
        self._window = (self._window + data)[-(len(self.marker) + len(data)):]
        if self.marker in self._window:
            self.seen_at = time.monotonic() - self.started
            self.in_run_at = seconds_in_run()
