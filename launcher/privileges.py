"""--chroot and --username, applied once the hypervisor is set up (as the 2.6.39 Launcher did:
/dev/lguest had to be opened, and the guest initialised, with the launcher's own rights)."""
from __future__ import annotations

import os
from typing import Callable

from launcher.config import ChrootUnusable, LaunchConfig
from launcher.errors import LauncherError


class PrivilegeDropFailed(LauncherError):
    """initgroups, setresgid or setresuid failed."""


def drop_privileges(config: LaunchConfig, say: Callable[[str], None]) -> None:
    """chroot (then chdir /), then become the user: initgroups, setresgid, setresuid."""
    if config.chroot is not None:
        try:
            os.chroot(config.chroot)
            os.chdir("/")
        except OSError as err:
            raise ChrootUnusable(f'chroot("{config.chroot}") failed: {err.strerror}') from err
        say("chroot done")
    user = config.user()
    if user is not None:
        uid, gid = user.pw_uid, user.pw_gid
        try:
            os.initgroups(user.pw_name, gid)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as err:
            raise PrivilegeDropFailed(f"dropping privileges to {user.pw_name}: {err.strerror}") from err
        say("Dropping privileges completed")
