"""`lguest-harness run [options] -- CMD [ARGS...]`: run one command in a fresh guest that sees
the host's files, and exit with its status.

The guest (the recipe kernel by default) mounts the host's / read-only over virtio-fs (tag
`hostroot`, served by virtiofsd with the host refusing writes), puts a tmpfs on /run and
tmpfs-backed overlays on /tmp, /var/tmp and $HOME (so programs that write there work, and
their writes vanish with the guest), mounts each --rwdir DIR writable at the same path (its
own share), chroots into that tree, changes to the current directory and runs CMD as the
invoking user with a small environment (PATH, HOME, USER, LOGNAME, TERM, LANG, LC_*).

CMD's stdout is the virtio console (hvc0, on our stdout); its stderr is the 8250 (ttyS0, on
our stderr, from the moment /init says CMD starts: the boot log stays out).  /init then
reports the status on ttyS0 with a per-run nonce and powers off.  Our exit status is CMD's;
a guest that panics, times out, crashes or cannot set up is RUN_FAILED with one line saying so.
CMD's stdin is our stdin (through hvc0) when that is a terminal, else /dev/null: the virtio
console has no end-of-file to pass on.
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets
import shlex
import sys
import tempfile
from pathlib import Path

HELP = "run a command in a guest that sees the host's files (read-only, --rwdir writable)"
RUN_FAILED = 125                # like env/chroot/docker: the command never ran or never ended
ROOT_TAG = "hostroot"
OVERLAID = ("/tmp", "/var/tmp")
ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG", "LANGUAGE", "TZ")
DEFAULT_MEM = 128
KERNEL_ARGS = ("console=ttyS0", "panic=-1", "quiet", "loglevel=1")


class RunUsageError(Exception):
    pass


def configure(parser) -> None:
    from launcher.devspec import add_device_arguments
    parser.add_argument("--kernel", type=Path, metavar="FILE", help="your kernel (default: the recipe kernel)")
    parser.add_argument("--mem", type=int, default=DEFAULT_MEM, help=f"guest memory in MiB (default {DEFAULT_MEM})")
    parser.add_argument("--rwdir", action="append", default=[], metavar="DIR",
                        help="a host directory the guest may write, at the same path (repeatable)")
    parser.add_argument("--backend", default=None, help="hypervisor backend (virtio-fs needs kvm)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help=f"give up after this long (status {RUN_FAILED})")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what the launcher does")
    add_device_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the command to run (`--` is required before it)")


def command_of(remainder: list[str]) -> list[str]:
    """`--` is required before CMD (argparse's REMAINDER keeps it): CMD is never our flags."""
    if not remainder or remainder[0] != "--":
        raise RunUsageError("`--` must come before the command: lguest-harness run [options] -- CMD [ARGS...]")
    if len(remainder) == 1:
        raise RunUsageError("no command after `--`: lguest-harness run [options] -- CMD [ARGS...]")
    return remainder[1:]


def run(args) -> int:
    try:
        command = command_of(args.command)
    except RunUsageError as err:
        print(f"lguest-harness run: usage error: {err}", file=sys.stderr)
        return 2
    return run_command(args, command)


def run_command(args, command: list[str]) -> int:
    from launcher.errors import LauncherError
    try:
        kernel = _kernel(args.kernel)
        with tempfile.TemporaryDirectory(prefix="lh-run-") as work:
            return _boot_and_run(args, command, kernel, Path(work))
    except RunUsageError as err:
        print(f"lguest-harness run: usage error: {err}", file=sys.stderr)
        return 2
    except LauncherError as err:
        print(f"lguest-harness run: {err}", file=sys.stderr)
        return RUN_FAILED


def _kernel(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            raise RunUsageError(f"--kernel {path}: no such file")
        return path
    from harness.kernel import ensure_kernel
    return ensure_kernel(log=lambda line: print(line, file=sys.stderr)).vmlinux


def _boot_and_run(args, command: list[str], kernel: Path, work: Path) -> int:
    from harness.initramfs import build_initramfs
    from launcher.config import LaunchConfig
    from launcher.devspec import FsSpec, flag_specs
    from launcher.hypervisor.base import Outcome
    from launcher.launcher import Launcher
    from launcher.transports.bus import Report

    rwdirs = [os.path.abspath(d) for d in args.rwdir]
    for d in rwdirs:
        if not os.path.isdir(d):
            raise RunUsageError(f"--rwdir {d}: no such directory")
    nonce = secrets.token_hex(8)
    tty = sys.stdout.isatty()
    script = init_script(command, nonce, rwdirs, os.getcwd(), pwd.getpwuid(os.getuid()),
                         environment(os.environ), stdin_tty=sys.stdin.isatty() and tty, keep_onlcr=tty)
    initrd = build_initramfs(work / "run.cpio", init_script=script, agent=False)
    shares = (FsSpec("/", ROOT_TAG, read_only=True),
              *(FsSpec(d, f"rw{n}") for n, d in enumerate(rwdirs)))
    config = LaunchConfig(mem_mb=args.mem, kernel=kernel, kernel_args=KERNEL_ARGS, initrd=initrd,
                          devices=(*shares, *flag_specs(args)), timeout=args.timeout, hvc="stdio",
                          **({"backend": args.backend} if args.backend else {}))
    watcher = StatusWatcher(nonce, boot_log=sys.stderr.buffer if args.verbose else None)
    say = (lambda text: print(f"lguest-harness run: {text}", file=sys.stderr)) if args.verbose else Report.quiet
    report = Report(say=say, tell=say)
    if not sys.stdin.isatty():
        _no_input_on_stdin()
    with Launcher(config, console_out=watcher.feed, report=report) as vm:
        for device in vm.devices:
            if getattr(device, "external_queues", False):     # the guest's files are gone with it
                device.on_failure = lambda reason: vm.request_stop(Outcome.INTERRUPTED, reason)
        stopped = vm.run()
    return watcher.result(stopped, args.timeout)


def _no_input_on_stdin() -> None:
    """CMD's stdin is /dev/null then (see init_script); give hvc0 a stdin that never ends, so
    the console does not announce the end of ours on CMD's stderr."""
    read_end, write_end = os.pipe()
    os.dup2(read_end, 0)
    os.close(read_end)
    _KEEP_OPEN.append(write_end)


_KEEP_OPEN: list[int] = []


def environment(host: dict) -> dict:
    env = {name: host[name] for name in ENV_NAMES if name in host}
    env.update({k: v for k, v in host.items() if k.startswith("LC_")})
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    return env


def init_script(command: list[str], nonce: str, rwdirs: list[str], cwd: str, user: pwd.struct_passwd,
                env: dict, *, stdin_tty: bool, keep_onlcr: bool) -> str:
    """The guest's /init (busybox sh): mounts, then CMD, then its status on ttyS0."""
    home = env.get("HOME", user.pw_dir)
    overlaid = [d for d in (*OVERLAID, home) if d not in ("/", "")]
    q = shlex.quote
    assignments = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    # GLIBC_TUNABLES comes from the kernel command line (this host's quirks): keep it.
    inner = (f"cd {q(cwd)} && exec env -i {assignments} "
             '${GLIBC_TUNABLES:+GLIBC_TUNABLES="$GLIBC_TUNABLES"} ' + shlex.join(command))
    if user.pw_uid == 0:
        runner = f"chroot /newroot /bin/sh -c {q(inner)}"
    else:
        runner = f"chroot /newroot /bin/busybox su -p -s /bin/sh {q(user.pw_name)} -c {q(inner)}"
    stdin = "/dev/hvc0" if stdin_tty else "/dev/null"
    opost = "" if keep_onlcr else "-opost"
    lines = [
        "#!/bin/sh",
        "export PATH=/bin:/sbin:/usr/bin:/usr/sbin",
        "/bin/busybox mount -t proc proc /proc",
        "mount -t devtmpfs devtmpfs /dev",
        f'fail() {{ echo; echo "lh-run-{nonce}-fail:$*" > /dev/ttyS0; poweroff -f; }}',
        "mkdir -p /newroot /ovl",
        f"mount -t virtiofs -o ro {ROOT_TAG} /newroot || fail mounting the host root over virtio-fs",
        "mount -t proc proc /newroot/proc && mount -t sysfs sysfs /newroot/sys "
        "&& mount -t devtmpfs devtmpfs /newroot/dev || fail mounting /proc, /sys, /dev",
        "mount -t tmpfs tmpfs /newroot/run; mount -t tmpfs tmpfs /ovl",
    ]
    for n, d in enumerate(overlaid):
        lines.append(f"[ -d /newroot{q(d)} ] && {{ mkdir -p /ovl/{n}/u /ovl/{n}/w; "
                     f"mount -t overlay overlay -o lowerdir=/newroot{d},upperdir=/ovl/{n}/u,workdir=/ovl/{n}/w "
                     f"/newroot{q(d)} || mount -t tmpfs tmpfs /newroot{q(d)} || fail overlaying {q(d)}; }}")
    for n, d in enumerate(rwdirs):
        lines.append(f"mount -t virtiofs rw{n} /newroot{q(d)} || fail mounting --rwdir {q(d)}")
    lines += [
        f"stty -F /dev/hvc0 raw -echo {opost} 2>/dev/null; stty -F /dev/ttyS0 {opost} 2>/dev/null",
        f'echo; echo "lh-run-{nonce}-start" > /dev/ttyS0',
        f"{runner} <{stdin} >/dev/hvc0 2>/dev/ttyS0",
        "status=$?",
        f'echo; echo "lh-run-{nonce}-exit:$status" > /dev/ttyS0',
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


class StatusWatcher:
    """The 8250's bytes: hidden until /init says CMD starts, then CMD's stderr (to ours), up
    to the status line."""

    def __init__(self, nonce: str, err=None, boot_log=None):
        self.err = err or sys.stderr.buffer
        self.boot_log = boot_log        # --verbose: the boot log as it comes
        self.start = f"lh-run-{nonce}-start".encode()
        self.marks = re.compile(rb"\r?\n?lh-run-" + nonce.encode() + rb"-(exit|fail):([^\r\n]*)\r?\n")
        self.before = bytearray()       # the boot log: shown only when the guest fails
        self.pending = bytearray()
        self.started = False
        self._eol = False
        self.status: int | None = None
        self.failure: str | None = None

    def feed(self, data: bytes) -> None:
        if self.status is not None or self.failure is not None:
            return
        if not self.started:
            if self.boot_log is not None:
                self.boot_log.write(data)
                self.boot_log.flush()
            self.before += data
            at = self.before.find(self.start)
            if at < 0:
                self._check_mark(self.before, forward=False)
                return
            rest = self.before[at + len(self.start):]
            del self.before[at:]
            self.started = True
            self._eol = True            # the start line's own end, which may come in a later chunk
            data = bytes(rest)
        if self._eol and data:
            data = self._drop_start_eol(data)
        self.pending += data
        self._check_mark(self.pending, forward=True)

    def _drop_start_eol(self, data: bytes) -> bytes:
        """Drop exactly the start line's "\n" (or "\r\n"), however the chunks split it."""
        if data[:1] == b"\r":
            data = data[1:]
        if data[:1] == b"\n":
            self._eol = False
            data = data[1:]
        return data

    def _check_mark(self, buffer: bytearray, forward: bool) -> None:
        match = self.marks.search(buffer)
        end = match.start() if match else max(0, len(buffer) - 96)  # a mark may be arriving
        if forward and end:
            self.err.write(bytes(buffer[:end]))
            self.err.flush()
            del buffer[:end]
            match = self.marks.search(buffer)
        if match:
            kind, value = match.group(1), match.group(2).decode(errors="replace")
            if kind == b"exit" and value.isdigit():
                self.status = int(value)
            else:
                self.failure = value

    def result(self, stopped, timeout: float) -> int:
        if self.status is not None:
            return self.status
        if self.pending:
            self.err.write(bytes(self.pending))
        if self.failure:
            why = f"guest set-up failed: {self.failure}"
        else:
            from launcher.hypervisor.base import Outcome
            why = (f"the command did not finish within {timeout:g} s" if stopped.outcome is Outcome.TIMEOUT
                   else f"the guest ended before the command did: {stopped.outcome.text}: {stopped.detail}")
        tail = self.before.decode(errors="replace").strip().splitlines()[-3:] if not self.started else []
        print(f"lguest-harness run: {why}" + (f" (console: {' / '.join(tail)})" if tail else ""), file=sys.stderr)
        return RUN_FAILED
