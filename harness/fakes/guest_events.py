"""What a scripted fake lguest guest yields to the fake host when the Launcher must see it.

The guest script (harness.fakes.lguest_host's FakeLguestGuest, and the fake shell it may run,
harness.fakes.fake_shell) is a generator of these; FakeLguestHost turns each into what a
pread of /dev/lguest returns:

    NotifyAddr(addr)  LHCALL_NOTIFY; an address with an attached eventfd signals the eventfd
                      and the guest runs on, any other returns addr to the Launcher
    Die(reason)       kill_guest: pread fails with ENOENT, the next pread returns the reason
                      (launcher.hypervisor.lguest.POWER_DOWN for a clean power-off)
    Restart()         LHCALL_SHUTDOWN(LGUEST_SHUTDOWN_RESTART): pread fails with ERESTART
    Pause()           give the Launcher the CPU back after LHREQ_BREAK: pread fails with EAGAIN

It imports nothing of the fakes, so the host and the shell both depend on it and the
shell never needs the host.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NotifyAddr:
    addr: int


@dataclasses.dataclass(frozen=True)
class Die:
    reason: str


@dataclasses.dataclass(frozen=True)
class Restart:
    pass


@dataclasses.dataclass(frozen=True)
class Pause:
    pass
