"""The /dev/lguest backend: the 2.6.39 Launcher's protocol with the lguest host module.

Requests are arrays of the host's `unsigned long` written to the device file:

    [LHREQ_INITIALIZE, guest_base, pfn_limit, entry]   tell_kernel: start the guest
    [LHREQ_IRQ, irq]                                   raise a device interrupt
    [LHREQ_EVENTFD, addr, fd]                          a NOTIFY of addr signals eventfd fd
    [LHREQ_BREAK, 1]                                   make a blocked pread return EAGAIN
                                                       (hosts before 2.6.32; later ones refuse it)

pread(fd, word, offset=cpu_id) runs the guest until it does LHCALL_NOTIFY of an address no
eventfd claims, and returns that address as one word.  ENOENT: the guest died, and the next
pread returns the reason string.  ERESTART: the guest asked for a reboot, which the Launcher
does by re-executing itself.  The word size is explicit (WordAbi): 4 bytes on the 32-bit
hosts lguest supported, 8 on x86-64.  The device file is opened through an injectable opener,
so harness.fakes.lguest_host can stand in for /dev/lguest.  lguest names stay in this file.
"""
from __future__ import annotations

import errno
import enum
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from launcher.errors import HypervisorError
from launcher.hypervisor.base import (
    Backend, BootLayout, BootSpec, ConsoleOut, Notify, Outcome, RebootPolicy, RunEvent, RunStats, Stopped,
)
from launcher.hypervisor.errors import BackendUnavailable, NotInitialized
from launcher.io.threads import start_shielded
from launcher.loader import E820Entry, HardwareSubarch, LoadFlags
from launcher.transports.lguest_bus import LguestBus

DEV_LGUEST = "/dev/lguest"
LGUEST_PAGE = 4096
ZERO_PAGE = 0                # "Boot information is stashed at physical address 0"
CMDLINE_ADDR = 0x1000        # "we put the command line after the boot header"
CMDLINE_CAPACITY = 2048      # x86 COMMAND_LINE_SIZE (the original's concat had no bound)
BOOT_PROTOCOL = 0x207        # "2.07 supports the fields for lguest"
REASON_MAX = 1023            # char reason[1024], NUL-terminated
POWER_DOWN = "CRASH: Power down"   # LHCALL_SHUTDOWN from lguest_power_off, as the host words it
CRASH_PREFIX = "CRASH: "           # LHCALL_SHUTDOWN with any other message: the guest's panic
BREAK_SIGNAL = signal.SIGUSR2      # breaks pread on hosts that refuse LHREQ_BREAK


class Lhreq(enum.IntEnum):
    """enum lguest_req (include/linux/lguest_launcher.h)."""
    LHREQ_INITIALIZE = 0
    LHREQ_GETDMA = 1     # obsolete since 2.6.23; never sent
    LHREQ_IRQ = 2
    LHREQ_BREAK = 3
    LHREQ_EVENTFD = 4


class WordDoesNotFit(HypervisorError):
    def __init__(self, value: int, size: int):
        super().__init__(f"{value:#x} does not fit the host's {size}-byte unsigned long")


class LguestRequestFailed(HypervisorError):
    """The host refused a request written to /dev/lguest."""


class LguestRunFailed(HypervisorError):
    """pread on /dev/lguest failed for a reason other than the guest's death or reboot."""


@dataclass(frozen=True)
class WordAbi:
    """The host's unsigned long: 4 bytes (i386 hosts, lguest's home) or 8 (x86-64)."""
    size: int

    def __post_init__(self):
        if self.size not in (4, 8):
            raise ValueError(f"an unsigned long is 4 or 8 bytes, not {self.size}")

    @property
    def layout(self) -> struct.Struct:
        return struct.Struct("<I" if self.size == 4 else "<Q")

    def pack(self, *words: int) -> bytes:
        for word in words:
            if not 0 <= word < 1 << (8 * self.size):
                raise WordDoesNotFit(word, self.size)
        return b"".join(self.layout.pack(word) for word in words)

    def unpack(self, data: bytes) -> tuple[int, ...]:
        if len(data) % self.size:
            raise ValueError(f"{len(data)} bytes are not a whole number of {self.size}-byte words")
        return tuple(w for (w,) in self.layout.iter_unpack(data))


ILP32 = WordAbi(4)
LP64 = WordAbi(8)
HOST_WORD = WordAbi(struct.calcsize("L"))


class LguestFile(Protocol):
    """What the backend needs of /dev/lguest (or of a fake host)."""

    def write(self, data: bytes) -> int: ...
    def pread(self, size: int, offset: int) -> bytes: ...
    def close(self) -> None: ...


class DevLguest:
    """The real device file."""

    def __init__(self, path: str = DEV_LGUEST):
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_dev_lguest(path: str) -> LguestFile:
    try:
        return DevLguest(path)
    except OSError as err:
        hint = " (is the lg module loaded?)" if err.errno == errno.ENOENT else ""
        raise BackendUnavailable(f"cannot open {path}: {err.strerror}{hint}") from err


def outcome_of(reason: str) -> Outcome:
    """How the host's death reason reads: power-off, the guest's own shutdown/panic, or a
    guest the host killed (bad hypercall, bad page table, ...)."""
    if reason == POWER_DOWN:
        return Outcome.POWER_OFF
    if reason.startswith(CRASH_PREFIX):
        return Outcome.PANIC
    return Outcome.GUEST_CRASH


class _BreakOut(Exception):
    """Raised by the break signal's handler to leave a pread the host will not end."""


class LguestBackend(Backend):
    """One lguest guest on cpu 0.  `ram_size` is guest RAM; memory may extend above it for
    the device page and vrings (lguest's layout)."""

    name = "lguest"
    bus = LguestBus
    reboot = RebootPolicy.REEXEC        # "we reboot by execing ourselves again"

    def __init__(self, memory, console_out: ConsoleOut | None = None, *, ram_size: int | None = None,
                 opener: Callable[[str], LguestFile] = open_dev_lguest, path: str = DEV_LGUEST,
                 abi: WordAbi = HOST_WORD, cpu_id: int = 0, system_map=None):
        self.memory = memory
        self.console_out = console_out
        self.ram_size = ram_size if ram_size is not None else memory.size
        self.guest_limit = memory.size
        self.opener, self.path, self.abi, self.cpu_id = opener, path, abi, cpu_id
        self.file: LguestFile | None = None
        self.stats = RunStats()
        self._stop: Stopped | None = None
        self._stop_lock = threading.Lock()
        self._write_lock = threading.Lock()   # service threads raise interrupts concurrently
        self._run_thread: int | None = None
        self._break_works = True

    # -- layout -----------------------------------------------------------------------------------
    def boot_layout(self) -> BootLayout:
        return BootLayout(
            boot_params=ZERO_PAGE, cmdline=CMDLINE_ADDR, cmdline_capacity=CMDLINE_CAPACITY,
            e820=(E820Entry(0, self.ram_size),),               # "a simple, single region"
            hardware_subarch=HardwareSubarch.LGUEST,
            loadflags=LoadFlags.KEEP_SEGMENTS,                 # don't reload segment registers
            version=BOOT_PROTOCOL,
            prefer_elf=False,     # a bzImage runs its own decompressor from code32_start
            initrd_max_end=self.ram_size,
            copy_setup_header=False,   # the original left the bzImage's setup header out
            kernel_kinds=self.boots)

    def set_guest_limit(self, limit: int) -> None:
        """The top of what the guest may touch: RAM plus the device pages in use."""
        if limit % LGUEST_PAGE or not self.ram_size <= limit <= self.memory.size:
            raise HypervisorError(f"guest limit {limit:#x} is not a page boundary between RAM's end "
                                  f"{self.ram_size:#x} and the mapping's end {self.memory.size:#x}")
        self.guest_limit = limit

    # -- requests ---------------------------------------------------------------------------------
    def _request(self, *words: int) -> None:
        data = self.abi.pack(*words)
        name = Lhreq(words[0]).name
        with self._write_lock:
            if self.file is None:
                raise NotInitialized(f"{name} before LHREQ_INITIALIZE")
            try:
                self.file.write(data)
            except OSError as err:
                raise LguestRequestFailed(f"writing {name} to {self.path}: {err.strerror}") from err

    def initialize(self, boot: BootSpec) -> None:
        """tell_kernel: open the device and hand it guest_base, pfn_limit and the entry."""
        if not 0 <= boot.entry < self.guest_limit:
            raise HypervisorError(f"entry {boot.entry:#x} is outside the guest (0..{self.guest_limit:#x})")
        if self.file is not None:
            raise HypervisorError(f"{self.path} is already initialised; restart() first")
        self.file = self.opener(self.path)
        self._request(Lhreq.LHREQ_INITIALIZE, self.memory.host_address,
                      self.guest_limit // LGUEST_PAGE, boot.entry)

    def raise_interrupt(self, irq: int) -> None:
        self._request(Lhreq.LHREQ_IRQ, irq)

    def attach_eventfd(self, addr: int, fd: int, *, length: int = 4, datamatch: int | None = None) -> None:
        if datamatch is not None:
            raise HypervisorError("lguest eventfds match an address only, never a value")
        self._request(Lhreq.LHREQ_EVENTFD, addr, fd)

    # -- running ----------------------------------------------------------------------------------
    def run(self, deadline: float | None = None) -> RunEvent:
        if self.file is None:
            raise NotInitialized("LguestBackend.run() before initialize()")
        self._run_thread = threading.get_ident()
        timer = self._start_deadline(deadline)
        previous = self._arm_break_signal()
        try:
            return self._run_until_event()
        except _BreakOut:       # the signal landed outside pread
            return self._stop
        finally:
            if timer is not None:
                timer.set()
            if previous is not None:
                signal.signal(BREAK_SIGNAL, previous)

    def _run_until_event(self) -> RunEvent:
        while True:
            if self._stop is not None:
                return self._stop
            try:
                data = self.file.pread(self.abi.size, self.cpu_id)
            except _BreakOut:
                continue
            except OSError as err:
                event = self._run_error(err)
                if event is None:
                    continue
                return event
            if len(data) != self.abi.size:
                raise LguestRunFailed(f"pread on {self.path} gave {len(data)} bytes, not one "
                                      f"{self.abi.size}-byte word")
            self.stats.count("notify")
            return Notify(self.abi.unpack(data)[0])

    def _run_error(self, err: OSError) -> RunEvent | None:
        if err.errno == errno.ENOENT:
            reason = self._death_reason()
            self.stats.count("death")
            return Stopped(outcome_of(reason), reason)
        if err.errno == errno.ERESTART:
            self.stats.count("restart")
            return Stopped(Outcome.REBOOT, "the guest asked for a restart (ERESTART)")
        if err.errno in (errno.EINTR, errno.EAGAIN):
            return None    # a break or a signal: look at the stop flag and carry on
        raise LguestRunFailed(f"running the guest failed: pread on {self.path}: {err.strerror}") from err

    def _death_reason(self) -> str:
        """ENOENT: "Reading tells us why"."""
        try:
            raw = self.file.pread(REASON_MAX, self.cpu_id)
        except OSError as err:
            return f"the guest died (reading the reason failed: {err.strerror})"
        return raw.split(b"\0", 1)[0].decode(errors="replace") or "the guest died (no reason given)"

    def _start_deadline(self, deadline: float | None) -> threading.Event | None:
        """A helper thread that stops the run at the deadline; set the event to cancel it.
        Shielded, so SIGINT/SIGTERM still land on the thread blocked in pread."""
        if deadline is None:
            return None
        cancelled = threading.Event()

        def watch():
            if not cancelled.wait(max(0.0, deadline - time.monotonic())):
                self.request_stop(Outcome.TIMEOUT, "the deadline passed")
        start_shielded(watch, "lguest-deadline")
        return cancelled

    def _arm_break_signal(self):
        """On the main thread, a handler that leaves pread when a stop is pending."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop is not None:
                raise _BreakOut()
        return signal.signal(BREAK_SIGNAL, handler)

    def request_stop(self, outcome: Outcome, detail: str = "") -> None:
        with self._stop_lock:
            if self._stop is None:
                self._stop = Stopped(outcome, detail)
        if self.file is None or self._run_thread is None:
            return
        if self._break_works:
            try:
                self._request(Lhreq.LHREQ_BREAK, 1)
                return
            except LguestRequestFailed:
                self._break_works = False    # 2.6.32+ hosts dropped LHREQ_BREAK
        signal.pthread_kill(self._run_thread, BREAK_SIGNAL)

    # -- the rest of the interface ------------------------------------------------------------------
    def send_console_input(self, data: bytes) -> int:
        """lguest has no UART: console input goes through the virtio console."""
        return 0

    def restart(self) -> None:
        """Close the device file; the guest is gone with it.  (The Launcher reboots an lguest
        guest by re-executing itself, as the original did.)"""
        self.close()
        self._stop = None

    def close(self) -> None:
        with self._write_lock:
            if self.file is not None:
                self.file.close()
                self.file = None
