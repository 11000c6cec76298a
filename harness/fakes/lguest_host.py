"""A fake lguest host: the host side of /dev/lguest in-process, running a scripted fake guest.

The lguest backend opens this instead of /dev/lguest (its opener is injectable).  The host
checks every request byte for byte (word size, request number, word count, guest_base ==
the GuestMemory's host address, pfn_limit, entry inside the guest, irq < LGUEST_IRQS, the fd
of LHREQ_EVENTFD really an eventfd, pread offset == cpu 0, size == one word): a bad one
fails as the 2.6.39 host would (EINVAL and friends) and is recorded in `violations`.

Each pread runs the fake guest (a generator, FakeLguestGuest.run) until it does something
the Launcher must see, one of harness.fakes.guest_events:

    NotifyAddr(addr)  LHCALL_NOTIFY; an address with an attached eventfd signals the eventfd
                      and the guest runs on, any other returns addr to the Launcher
    Die(reason)       kill_guest: pread fails with ENOENT, the next pread returns the reason
    Restart()         LHCALL_SHUTDOWN(LGUEST_SHUTDOWN_RESTART): pread fails with ERESTART
    Pause()           give the Launcher the CPU back after LHREQ_BREAK: pread fails with EAGAIN

The guest reads the boot header and the device page just above RAM, negotiates features,
sets the status, builds each vring at its pfn (harness.fakes.driver), and exercises the
console, block, net and rng devices; any surprise kills it with a reason naming the check.
Its behaviour comes from `fake.*` options on the kernel command line (GuestOptions);
`fake.shell` ends the script with a tiny shell on the console (harness.fakes.fake_shell),
so harness.console.Guest can drive the fake guest as it drives a real one.

    lguest-harness boot --backend fake 32 vmlinux fake.end=panic
"""
from __future__ import annotations

import dataclasses
import errno
import os
import struct
import threading
import time
from typing import Iterator

from harness.fakes.driver import FakeDriver
from harness.fakes.fake_shell import serve
from harness.fakes.guest_events import Die, NotifyAddr, Pause, Restart
from launcher.hypervisor import register_backend
from launcher.hypervisor.lguest import CRASH_PREFIX, HOST_WORD, POWER_DOWN, Lhreq, LguestBackend, WordAbi
from launcher.loader import bootparams as bp
from launcher.memory import GuestMemory

PAGE = 4096
LGUEST_IRQS = 32            # NR_IRQS capped at 32, as lguest_user.c's user_send_irq checks
BOOT_ENV = "LGUEST_HARNESS_FAKE_BOOT"   # boots so far; survives the Launcher's re-exec

# struct lguest_device_desc / lguest_vqconfig, as the guest's lguest_device.c reads them.
DESC = struct.Struct("<BBBBB")
VQCONFIG = struct.Struct("<HHI")
ACK, DRIVER, DRIVER_OK, FAILED = 1, 2, 4, 0x80
CONSOLE, NET, BLOCK, RNG = 3, 1, 2, 4
NAMES = {CONSOLE: "console", BLOCK: "block", NET: "net", RNG: "rng"}

# Feature bits the fake drivers understand (they accept the offered ones among these).
DRIVER_FEATURES = {NET: 1 << 5, BLOCK: (1 << 5) | (1 << 9), CONSOLE: 0, RNG: 0}
BLK_F_RO, BLK_F_FLUSH = 5, 9
BLK_T_IN, BLK_T_OUT, BLK_T_FLUSH = 0, 1, 4
NET_HDR = bytes(10)
ARENA = (0x10000, 0x9F000)  # low memory below 640K: never kernel (1 MiB+) or initrd (top)
ARENA_CHUNK = 0x4000
EARLY_CONSOLE_ADDR = 0x3000


class GuestCheckFailed(Exception):
    """The fake guest found the Launcher's work wrong; it dies with this reason."""


@dataclasses.dataclass
class GuestOptions:
    """`fake.KEY=VALUE` on the kernel command line; an unknown KEY kills the guest with a reason."""
    end: str = "poweroff"        # poweroff | panic | die | restart | hang
    reason: str = "scripted death"   # for die/panic; "_" stands for a space
    restarts: int = 0            # with end=poweroff: restart this many times first (BOOT_ENV)
    sector: int = 0              # the block sector written and read back
    console_rx: bool = False     # wait for one buffer of console input and echo it
    net_rx: bool = False         # wait for one received frame
    timeout: float = 5.0         # per wait for the device
    reprobe: bool = False        # then reset every device (status 0) and probe it again
    fail: str = ""               # finally set FAILED on devices of this name (console, block, ...)
    shell: bool = False          # then a tiny shell on the console (harness.fakes.fake_shell)

    @classmethod
    def from_cmdline(cls, text: str) -> "GuestOptions":
        opts = cls()
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for word in text.split():
            key, _, value = word.partition("=")
            if not key.startswith("fake."):
                continue
            name = key[len("fake."):]
            if name not in types:
                raise GuestCheckFailed(f"unknown option {key}")
            kind = types[name]
            if kind in ("bool", bool):
                setattr(opts, name, value not in ("0", "no", "false"))
            elif kind in ("int", int):
                setattr(opts, name, int(value, 0))
            elif kind in ("float", float):
                setattr(opts, name, float(value))
            else:
                setattr(opts, name, value.replace("_", " "))
        return opts


@dataclasses.dataclass
class FoundDevice:
    """One lguest_device_desc as the guest read it."""
    type: int
    addr: int
    queues: list[tuple[int, int, int]]      # (num, irq, pfn)
    features_addr: int
    feature_len: int
    config: bytes
    offered: int = 0
    accepted: int = 0
    drivers: list[FakeDriver] = dataclasses.field(default_factory=list)

    @property
    def accepted_addr(self) -> int:
        return self.features_addr + self.feature_len


class FakeLguestGuest:
    """The scripted guest.  `log` says what it did; `results` keeps what each device gave."""

    def __init__(self, host: "FakeLguestHost", options: GuestOptions | None = None):
        self.host, self.memory = host, host.memory
        self.options = options
        self.log: list[str] = []
        self.results: dict[str, object] = {}
        self.cmdline = ""
        self._arena_next = ARENA[0]

    # -- the script -------------------------------------------------------------------------------
    def run(self) -> Iterator:
        ram = self.check_boot_header()
        boot = self.host.boot_number
        yield from self.early_print(f"fake lguest guest: boot {boot}, {ram >> 20} MiB\n")
        devices = self.scan_devices(ram)
        for dev in devices:
            yield from self.probe(dev)
        if self.options.reprobe:
            for dev in devices:
                yield from self.set_status(dev, 0)       # reset: the Launcher stops its threads
            for dev in devices:
                # After a reset the queues' eventfds stay attached and the device's threads
                # are stopped: a kick before DRIVER_OK would go unheard (as in the original).
                yield from self.probe(dev, use_before_driver_ok=False)
            self.results["reprobed"] = len(devices)
        summary = ", ".join(self.results_line(d) for d in devices)
        console = next((d for d in devices if d.type == CONSOLE), None)
        if console is not None:
            yield from self.console_write(console, f"fake lguest guest: {summary}\n".encode())
        for dev in devices:
            if NAMES.get(dev.type) == self.options.fail:
                yield from self.set_status(dev, ACK | DRIVER | DRIVER_OK | FAILED)
        if self.options.shell:
            self.expect(console is not None, "fake.shell: there is no console")
            ended = yield from serve(self, console)
            if ended is not None:
                yield ended
                return
        if self.options.end == "hang":
            yield from self.hang()
        yield self.ending(boot)

    def ending(self, boot: int):
        opts = self.options
        if opts.end == "restart" or (opts.end == "poweroff" and boot < opts.restarts):
            os.environ[BOOT_ENV] = str(boot + 1)
            return Restart()
        if opts.end == "panic":
            return Die(f"{CRASH_PREFIX}Kernel panic - not syncing: {opts.reason}")
        if opts.end == "die":
            return Die(opts.reason)
        return Die(POWER_DOWN)

    def hang(self) -> Iterator:
        """Spin in the guest forever; only the Launcher breaking out (LHREQ_BREAK) ends a run."""
        while True:
            if self.host.break_pending:
                yield Pause()
            self.host.wait_irq(0.05)

    # -- boot header ------------------------------------------------------------------------------
    def check_boot_header(self) -> int:
        zero = self.memory.read(0, bp.ZERO_PAGE_SIZE)
        self.expect(bp.get(zero, "hardware_subarch") == 1,
                    f"hardware_subarch is {bp.get(zero, 'hardware_subarch')}, not 1 (lguest)")
        self.expect(bp.get(zero, "loadflags") & bp.LoadFlags.KEEP_SEGMENTS, "loadflags lack KEEP_SEGMENTS")
        self.expect(bp.get(zero, "e820_entries") == 1, f"{bp.get(zero, 'e820_entries')} e820 entries, not 1")
        addr, size, kind = bp.E820_ENTRY.unpack_from(zero, bp.E820_TABLE)
        self.expect(addr == 0 and kind == bp.E820Type.RAM and size % PAGE == 0,
                    f"e820 entry {addr:#x}+{size:#x} type {kind} is not RAM from 0")
        ptr = bp.get(zero, "cmd_line_ptr")
        cmdline = self.memory.read(ptr, self.memory.strnlen(ptr, 4096)).decode()
        if self.options is None:
            self.options = GuestOptions.from_cmdline(cmdline)
        self.log.append(f"cmdline {cmdline!r}")
        self.cmdline = cmdline
        return size

    def early_print(self, text: str) -> Iterator:
        self.memory.write(EARLY_CONSOLE_ADDR, text.encode() + b"\0")
        yield NotifyAddr(EARLY_CONSOLE_ADDR)

    # -- the device page --------------------------------------------------------------------------
    def scan_devices(self, page: int) -> list[FoundDevice]:
        """lguest_devices = the page at max_pfn; descriptors until type 0."""
        found, at, end = [], page, page + PAGE
        while at + DESC.size <= end:
            dtype, num_vq, flen, clen, status = self.memory.unpack(DESC, at)
            if dtype == 0:
                break
            size = DESC.size + VQCONFIG.size * num_vq + 2 * flen + clen
            self.expect(at + size <= end, f"device at {at:#x} runs past the device page")
            self.expect(status == 0, f"device at {at:#x} starts with status {status:#x}, not 0")
            queues = [self.memory.unpack(VQCONFIG, at + DESC.size + VQCONFIG.size * k) for k in range(num_vq)]
            feat = at + DESC.size + VQCONFIG.size * num_vq
            dev = FoundDevice(dtype, at, queues, feat, flen, self.memory.read(feat + 2 * flen, clen))
            dev.offered = int.from_bytes(self.memory.read(feat, flen), "little")
            found.append(dev)
            at += size
        self.log.append("devices " + " ".join(str(d.type) for d in found))
        return found

    def set_status(self, dev: FoundDevice, status: int) -> Iterator:
        self.memory.write_u8(dev.addr + 4, status)
        yield NotifyAddr(dev.addr)
        now = self.memory.read_u8(dev.addr + 4)
        self.expect(now == status, f"device type {dev.type} at {dev.addr:#x}: status {status:#x} "
                                   f"read back as {now:#x}")

    def probe(self, dev: FoundDevice, use_before_driver_ok: bool = True) -> Iterator:
        """As virtio_dev_probe on lguest: ACK, DRIVER, features, rings, (use), DRIVER_OK."""
        yield from self.set_status(dev, ACK)
        yield from self.set_status(dev, ACK | DRIVER)
        dev.accepted = dev.offered & DRIVER_FEATURES.get(dev.type, 0)
        self.memory.write(dev.accepted_addr, dev.accepted.to_bytes(dev.feature_len, "little"))
        dev.drivers = [self.make_driver(num, pfn) for num, _irq, pfn in dev.queues]
        if dev.type == BLOCK and use_before_driver_ok:
            # The disk is used before DRIVER_OK (it reads partitions during probe): the
            # Launcher must start the device on the kick, as the original did.
            yield from self.exercise_block(dev)
        yield from self.set_status(dev, ACK | DRIVER | DRIVER_OK)
        exercise = {CONSOLE: self.exercise_console, NET: self.exercise_net, RNG: self.exercise_rng}
        if dev.type == BLOCK and not use_before_driver_ok:
            yield from self.exercise_block(dev)
        elif dev.type in exercise:
            yield from exercise[dev.type](dev)

    def make_driver(self, num: int, pfn: int) -> FakeDriver:
        start = self._arena_next
        self.expect(start + ARENA_CHUNK <= ARENA[1], "out of low memory for buffers")
        self._arena_next += ARENA_CHUNK
        return FakeDriver.legacy(self.memory, num, pfn * PAGE, 4096, arena=(start, ARENA_CHUNK))

    # -- queues -----------------------------------------------------------------------------------
    def kick(self, dev: FoundDevice, index: int) -> Iterator:
        if dev.drivers[index].kick():
            yield NotifyAddr(dev.queues[index][2] * PAGE)

    def wait_used(self, dev: FoundDevice, index: int, what: str) -> Iterator:
        """Wait for the device to use a buffer, then check its interrupt was raised."""
        driver, irq = dev.drivers[index], dev.queues[index][1]
        deadline = time.monotonic() + self.options.timeout
        while driver.used_idx == driver.last_used_idx:
            if self.host.break_pending:
                yield Pause()
                continue
            left = deadline - time.monotonic()
            self.expect(left > 0, f"{what}: no used buffer within {self.options.timeout:g}s")
            self.host.wait_irq(min(left, 0.05))
        self.host.wait_for_irq(irq, self.options.timeout, what)
        results = driver.reap()
        return results

    def request(self, dev: FoundDevice, index: int, readable: list, writable: list[int], what: str):
        """Post one chain, kick, wait; returns (used length, bytes written)."""
        head = dev.drivers[index].add(readable, writable)
        yield from self.kick(dev, index)
        results = yield from self.wait_used(dev, index, what)
        self.expect(len(results) == 1 and results[0][0] == head, f"{what}: used ring gave {results}")
        return results[0][1], results[0][2]

    # -- devices ----------------------------------------------------------------------------------
    def console_write(self, dev: FoundDevice, data: bytes) -> Iterator:
        yield from self.request(dev, 1, [data], [], "console transmitq")

    def exercise_console(self, dev: FoundDevice) -> Iterator:
        rx = dev.drivers[0]
        rx.add([], [256])
        yield from self.kick(dev, 0)
        yield from self.console_write(dev, b"fake lguest guest: hello through virtio-console\n")
        if self.options.console_rx:
            got = yield from self.wait_used(dev, 0, "console receiveq")
            data = got[0][2]
            self.results["console_rx"] = data
            yield from self.console_write(dev, b"fake lguest guest: got " + data + b"\n")
        self.results["console"] = "ok"

    def exercise_block(self, dev: FoundDevice) -> Iterator:
        capacity = struct.unpack_from("<Q", dev.config)[0]
        sector = self.options.sector
        self.expect(sector < capacity, f"block: sector {sector} is past the disk's {capacity} sectors")
        read_only = dev.offered >> BLK_F_RO & 1
        if not read_only:
            data = f"lguest-harness fake guest wrote sector {sector}\n".encode().ljust(512, b"\0")
            yield from self.block_request(dev, BLK_T_OUT, sector, [data], [], "block write")
            if dev.accepted >> BLK_F_FLUSH & 1:
                yield from self.block_request(dev, BLK_T_FLUSH, 0, [], [], "block flush")
        length, back = yield from self.block_request(dev, BLK_T_IN, sector, [], [512], "block read")
        if not read_only:
            self.expect(back[:512] == data, "block: sector read back differs from what was written")
        self.results["block"] = back[:512]

    def block_request(self, dev, kind: int, sector: int, out: list, into: list[int], what: str):
        header = struct.pack("<IIQ", kind, 0, sector)
        length, written = yield from self.request(dev, 0, [header, *out], [*into, 1], what)
        status = written[length - 1] if length else None
        self.expect(status == 0, f"{what}: status byte {status}, not VIRTIO_BLK_S_OK")
        return length, written

    def exercise_net(self, dev: FoundDevice) -> Iterator:
        rx = dev.drivers[0]
        rx.add([], [len(NET_HDR) + 1514])
        yield from self.kick(dev, 0)
        frame = bytes.fromhex("ffffffffffff020000000001" "88b5") + b"fake lguest guest".ljust(46, b"\0")
        yield from self.request(dev, 1, [NET_HDR + frame], [], "net transmitq")
        if self.options.net_rx:
            got = yield from self.wait_used(dev, 0, "net receiveq")
            self.results["net_rx"] = got[0][2][len(NET_HDR):]
        self.results["net"] = "ok"

    def exercise_rng(self, dev: FoundDevice) -> Iterator:
        length, data = yield from self.request(dev, 0, [], [64], "rng requestq")
        self.expect(length == 64, f"rng: filled {length} bytes of 64")
        self.results["rng"] = data

    def results_line(self, dev: FoundDevice) -> str:
        name = NAMES.get(dev.type, f"type {dev.type}")
        return f"{name} ok" if name in self.results else f"{name} seen"

    def expect(self, ok, message: str) -> None:
        if not ok:
            raise GuestCheckFailed(message)


# -- the host -------------------------------------------------------------------------------------

class FakeLguestHost:
    """The /dev/lguest file the backend opens (`opener=host.open`)."""

    def __init__(self, memory: GuestMemory, *, abi: WordAbi = HOST_WORD, options: GuestOptions | None = None,
                 guest_class=FakeLguestGuest):
        self.memory, self.abi = memory, abi
        self.options, self.guest_class = options, guest_class
        self.guest: FakeLguestGuest | None = None
        self.writes: list[bytes] = []           # every write, raw
        self.requests: list[tuple] = []         # every accepted request, decoded
        self.violations: list[str] = []
        self.eventfds: dict[int, list[int]] = {}
        self.irqs: list[int] = []
        self.initialized: tuple[int, int, int] | None = None
        self.dead: str | None = None
        self.restarting = False
        self.break_pending = False
        self.opens = self.closes = 0
        self.boot_number = int(os.environ.get(BOOT_ENV, "0") or 0)
        self._script: Iterator | None = None
        self._cond = threading.Condition()

    # -- the file -----------------------------------------------------------------------------------
    def open(self, path: str) -> "FakeLguestHost":
        self.opens += 1
        return self

    def close(self) -> None:
        self.closes += 1

    def _refuse(self, err: int, message: str):
        self.violations.append(message)
        raise OSError(err, f"{os.strerror(err)} ({message})")

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.writes.append(data)
        if not data or len(data) % self.abi.size:
            self._refuse(errno.EINVAL, f"write of {len(data)} bytes is not whole {self.abi.size}-byte words")
        words = self.abi.unpack(data)
        handlers = {Lhreq.LHREQ_INITIALIZE: (4, self._initialize), Lhreq.LHREQ_IRQ: (2, self._irq),
                    Lhreq.LHREQ_EVENTFD: (3, self._eventfd), Lhreq.LHREQ_BREAK: (2, self._break)}
        if words[0] not in handlers:
            self._refuse(errno.EINVAL, f"request {words[0]} is not one the 2.6.39 host takes")
        count, handler = handlers[Lhreq(words[0])]
        if len(words) != count:
            self._refuse(errno.EINVAL, f"{Lhreq(words[0]).name} takes {count} words, got {len(words)}")
        if words[0] != Lhreq.LHREQ_INITIALIZE and self.initialized is None:
            self._refuse(errno.EINVAL, f"{Lhreq(words[0]).name} before LHREQ_INITIALIZE")
        handler(*words[1:])
        self.requests.append((Lhreq(words[0]).name, *words[1:]))
        return len(data)

    def _initialize(self, base: int, pfn_limit: int, entry: int) -> None:
        if self.initialized is not None:
            self._refuse(errno.EBUSY, "LHREQ_INITIALIZE twice")
        if base != self.memory.host_address:
            self._refuse(errno.EINVAL, f"guest_base {base:#x} is not the guest memory's host address "
                                       f"{self.memory.host_address:#x}")
        if not 0 < pfn_limit * PAGE <= self.memory.size:
            self._refuse(errno.EINVAL, f"pfn_limit {pfn_limit:#x} is outside the guest mapping "
                                       f"({self.memory.size // PAGE:#x} pages)")
        if entry >= pfn_limit * PAGE:
            self._refuse(errno.EINVAL, f"entry {entry:#x} is past pfn_limit {pfn_limit:#x}")
        self.initialized = (base, pfn_limit, entry)
        self.guest = self.guest_class(self, self.options)
        self._script = self.guest.run()

    def _irq(self, irq: int) -> None:
        if irq >= LGUEST_IRQS:
            self._refuse(errno.EINVAL, f"irq {irq} >= LGUEST_IRQS {LGUEST_IRQS}")
        with self._cond:
            self.irqs.append(irq)
            self._cond.notify_all()

    def _eventfd(self, addr: int, fd: int) -> None:
        if not _is_eventfd(fd):
            self._refuse(errno.EBADF, f"LHREQ_EVENTFD fd {fd} is not an eventfd")
        if addr >= self.initialized[1] * PAGE:
            self._refuse(errno.EINVAL, f"LHREQ_EVENTFD address {addr:#x} is outside the guest")
        self.eventfds.setdefault(addr, []).append(fd)

    def _break(self, on: int) -> None:
        if on != 1:
            self._refuse(errno.EINVAL, f"LHREQ_BREAK {on}: the Launcher only ever breaks out (1)")
        with self._cond:
            self.break_pending = True
            self._cond.notify_all()

    # -- running the guest --------------------------------------------------------------------------
    def pread(self, size: int, offset: int) -> bytes:
        if self.initialized is None:
            self._refuse(errno.EINVAL, "pread before LHREQ_INITIALIZE")
        if offset != 0:
            self._refuse(errno.EINVAL, f"pread offset {offset} is not cpu 0 (the only cpu)")
        if self.dead is not None:
            # After the ENOENT that reported the death, a read returns the reason (lguest_user.c).
            return (self.dead.encode() + b"\0")[:size]
        if size != self.abi.size:
            self._refuse(errno.EINVAL, f"pread of {size} bytes to run the guest, not one {self.abi.size}-byte word")
        if self.restarting:
            raise OSError(errno.ERESTART, os.strerror(errno.ERESTART))
        with self._cond:
            if self.break_pending:
                self.break_pending = False
                raise OSError(errno.EAGAIN, "broken out (LHREQ_BREAK)")
        return self.abi.pack(self._run_guest())

    def _run_guest(self) -> int:
        while True:
            event = self._next_event()
            if isinstance(event, NotifyAddr):
                fds = self.eventfds.get(event.addr)
                if not fds:
                    return event.addr
                for fd in fds:
                    os.eventfd_write(fd, 1)
            elif isinstance(event, Die):
                self.dead = event.reason
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            elif isinstance(event, Restart):
                self.restarting = True
                raise OSError(errno.ERESTART, os.strerror(errno.ERESTART))
            elif isinstance(event, Pause):
                with self._cond:
                    self.break_pending = False
                raise OSError(errno.EAGAIN, "broken out (LHREQ_BREAK)")

    def _next_event(self):
        try:
            return next(self._script)
        except StopIteration:
            return Die(POWER_DOWN)
        except GuestCheckFailed as err:
            return Die(f"fake guest: {err}")
        except Exception as err:  # noqa: BLE001 - a guest crash, reported as the host would
            return Die(f"fake guest crashed: {type(err).__name__}: {err}")

    # -- for the guest -------------------------------------------------------------------------------
    def wait_irq(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def wait_for_irq(self, irq: int, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: irq in self.irqs, timeout):
                raise GuestCheckFailed(f"{what}: used buffer but no interrupt {irq} (got {self.irqs})")
            self.irqs.remove(irq)


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


# -- the "fake" backend -----------------------------------------------------------------------------

class FakeLguestBackend(LguestBackend):
    """The lguest backend opened against a FakeLguestHost instead of /dev/lguest."""

    name = "fake"

    def __init__(self, memory, console_out=None, *, options: GuestOptions | None = None,
                 abi: WordAbi = HOST_WORD, guest_class=FakeLguestGuest, **kwargs):
        self.host = FakeLguestHost(memory, abi=abi, options=options, guest_class=guest_class)
        super().__init__(memory, console_out, opener=self.host.open, path="fake:/dev/lguest", abi=abi, **kwargs)


fake_backend = FakeLguestBackend


def register() -> None:
    """Offer `--backend fake` (harness.cli calls this at start-up; the launcher never imports us)."""
    register_backend("fake", "harness.fakes.lguest_host:FakeLguestBackend")
