"""The test guest's initramfs: busybox-static, a short /init, uncompressed newc cpio.

Guest kernel code is emulated on kvm_pvm hosts (a fork+exec costs ~1 s), so /init
does as little as it can: one `mount -a`, the ready marker, a shell.  The image is
uncompressed because gunzip inside such a guest costs tens of seconds.

When the kernel command line says `lhagent=hvc0` (an unknown parameter, so the kernel hands it
to /init as the environment variable lhagent) and the guest has /dev/hvc0, /init starts
lh-agent there (harness.channel: the command channel) and says so on the console before the
ready marker; Guest then talks to the agent, and the serial console keeps the kernel log.
"""
from __future__ import annotations

from pathlib import Path

from harness.cpio import CpioWriter

READY_MARKER = "lguest-harness: ready"
AGENT_MARKER = "lguest-harness: agent on "      # + the console: hvc0 (kvm), console (fake)
AGENT_PARAM = "lhagent"
PROMPT = "# "
BUSYBOX = Path("/bin/busybox")

FSTAB = """\
proc     /proc proc     defaults 0 0
sysfs    /sys  sysfs    defaults 0 0
devtmpfs /dev  devtmpfs defaults 0 0
tmpfs    /tmp  tmpfs    defaults 0 0
"""

DIRECTORIES = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
               "root", "mnt", "var", "run")


def default_init(commands: list[str] | tuple[str, ...] = ()) -> str:
    """The /init script: mount, run `commands`, print the ready marker, then a shell."""
    lines = [
        "#!/bin/sh",
        "export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root",
        "/bin/busybox mount -a",  # by path: applets run through /proc/self/exe, not there yet
        *commands,
        f'if [ "${AGENT_PARAM}" = hvc0 ] && [ -c /dev/hvc0 ]; then'
        f' /bin/lh-agent /dev/hvc0 & echo "{AGENT_MARKER}hvc0"; fi',
        f'echo "{READY_MARKER}"',
        f"exec setsid cttyhack env PS1='{PROMPT}' sh",
    ]
    return "\n".join(lines) + "\n"


def share_mounts(shares) -> list[str]:
    """/init lines mounting each HOSTDIR:TAG[:ro] share at /mnt/TAG (read-only ones ro)."""
    lines = []
    for share in shares:
        read_only = str(share).endswith(":ro")
        tag = str(share)[:-3 if read_only else None].rpartition(":")[2]
        lines.append(f"mkdir -p /mnt/{tag} && mount -t virtiofs{' -o ro' if read_only else ''} {tag} /mnt/{tag}")
    return lines


def _busybox() -> bytes:
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    return BUSYBOX.read_bytes()


def _data(content) -> bytes:
    if isinstance(content, Path):
        return content.read_bytes()
    return content.encode() if isinstance(content, str) else bytes(content)


def build_initramfs(dest: Path, *, extra_files: dict | None = None, init_script: str | None = None,
                    commands: tuple[str, ...] = (), agent: bool = True) -> Path:
    """Write the initramfs to dest and return dest.

    Busybox applets are run from the shell without links, through /proc/self/exe: a custom
    init_script must mount /proc first, by path (`/bin/busybox mount -t proc proc /proc`).
    extra_files maps a guest path to bytes, str or a host Path (copied with mode 0755
    when the host file is executable).  init_script replaces /init entirely;
    commands are shell lines the default /init runs before the ready marker.  agent puts
    lh-agent in /bin (the default /init starts it when the command line asks).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        cpio = CpioWriter(out)
        for name in DIRECTORIES:
            cpio.directory(name)
        cpio.char_device("dev/console", 5, 1)  # the kernel opens it before /init runs
        cpio.char_device("dev/null", 1, 3, perm=0o666)
        cpio.file("bin/busybox", _busybox(), perm=0o755)
        # Only /bin/sh: Debian's busybox runs its applets from the shell without links
        # (FEATURE_SH_STANDALONE), and each of ~270 links costs the kernel's initramfs
        # unpacker real time on hosts that emulate guest kernel code.
        cpio.symlink("bin/sh", "busybox")
        cpio.file("etc/fstab", FSTAB.encode())
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        cpio.file("etc/group", b"root:x:0:\n")
        if agent:
            from harness.agent import GUEST_PATH, ensure_agent
            cpio.file(GUEST_PATH, ensure_agent().read_bytes(), perm=0o755)
        cpio.file("init", (init_script or default_init(commands)).encode(), perm=0o755)
        for guest_path, content in (extra_files or {}).items():
            executable = isinstance(content, Path) and content.stat().st_mode & 0o111
            cpio.file(guest_path, _data(content), perm=0o755 if executable else 0o644)
        cpio.close()
    return dest
