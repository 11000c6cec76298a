"""The 2.6.39 Launcher's reboot: "we reboot by execing ourselves again".

A backend whose reboot policy is RebootPolicy.REEXEC (launcher.hypervisor.base) gets this
once its guest asked for a restart and everything was closed: every fd above stderr
closed, then the process exec'd afresh with the argv it was started with.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

from launcher.errors import LauncherError


class RestartFailed(LauncherError):
    """The guest asked for a reboot and the launcher could not exec itself again."""


def original_argv() -> list[str]:
    """The command line this process was started with: the interpreter and all its arguments."""
    return [sys.executable, *sys.orig_argv[1:]]


@dataclasses.dataclass(frozen=True)
class Reexec:
    """How a reboot re-executes the launcher (tests inject execv and argv)."""
    execv: Callable = os.execv
    argv: tuple[str, ...] | None = None     # default: original_argv()
    close_fds: bool = True

    def __call__(self) -> None:
        argv = list(self.argv) if self.argv else original_argv()
        if self.close_fds:
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        try:
            self.execv(argv[0], argv)
        except OSError as err:      # e.g. the interpreter is not inside --chroot
            raise RestartFailed(f"could not exec {argv[0]} to restart the guest: {err.strerror}") from err
