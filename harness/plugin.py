"""pytest plugin: guests as fixtures (registered through the pytest11 entry point).

    @pytest.mark.guest(mem=64, cmdline=("quiet",), block=True, net=True, rng=True)
    def test_uname(guest):
        assert guest.run("uname -r").status == 0

The `guest` fixture boots once per module (per distinct marker) unless the marker
says scope="function" or scope="session"; `guest_factory` boots as many as a test
wants.  fresh=True gives each test its own guest restored from a snapshot of the spec's
guest (harness.snapshots: taken once, cached by kernel, initramfs and options), so a test
gets a clean guest for well under a second instead of a boot (kvm; other backends boot).
On failure the serial log and the launcher's log are attached to the report
(and to --junitxml), and saved under --guest-keep-logs, for a guest that never got ready
(a setup error) as for a failing test; the kernel and initramfs are checked before any
guest starts.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import sys
from pathlib import Path

import pytest
from _pytest.reports import TestReport

from harness import disks, ktap as ktap_parser, netns
from harness.console import Guest, GuestError, GuestTimeout, readable
from harness.initramfs import share_mounts
from harness.launch import DEFAULT_CMDLINE, GuestSpec, boot
from harness.preflight import initrd_problem, kernel_problem

REPORT_CHARS = 20000
_GUESTS = pytest.StashKey[list]()
_POOL = pytest.StashKey[dict]()
_NUMBERS = pytest.StashKey[itertools.count]()    # pooled guests' names: each its own, replacements too
_CHECKED = pytest.StashKey[dict]()        # (kernel, backend) -> problem or None
_SNAPSHOTS = pytest.StashKey[dict]()      # repr(spec) -> its snapshot, fixed for the session
_ATTACHED = pytest.StashKey[set]()        # guests whose logs an item's report already carries
_IMAGES = pytest.StashKey[dict]()         # content hash of files=/commands= -> initramfs path
_KTAP_FAILED = pytest.StashKey[list]()    # an item's failing KTAP subtests
READY_TIMEOUT = float(os.environ.get("LGUEST_HARNESS_READY_TIMEOUT", 300))    # seconds; raise it on a loaded host

AUTO = "auto"


# -- options and markers -------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("lguest-harness", "guests booted by lguest-harness")
    group.addoption("--guest-kernel", type=Path, help="guest kernel (vmlinux or bzImage); default: the recipe kernel")
    group.addoption("--guest-initrd", type=Path, help="guest initramfs; default: the harness's busybox image")
    group.addoption("--guest-backend", default=None,
                    help="hypervisor backend: kvm (the default), qemu, lguest, fake, or auto (kvm on ordinary KVM, "
                         "qemu where /dev/kvm is missing or emulates guest kernel code; the report header says why)")
    group.addoption("--guest-mem", type=int, default=64, help="guest memory in MiB (default 64)")
    group.addoption("--guest-keep-logs", type=Path, metavar="DIR", help="save failing guests' logs under DIR")
    group.addoption("--guest-differential", metavar="A,B", default=None,
                    help="the two backends a differential test compares (default kvm,qemu)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "guest(mem=, cmdline=, block=, net=, rng=, shares=, files=, commands=, backend=, backends=, "
                   "scope=, fresh=, cpus=, channel=, transport=): how the `guest` fixture boots its guest")
    config.addinivalue_line(
        "markers", "differential(backends=, block=, **guest options): the `differential` fixture boots the "
                   "guest on two backends and compares the commands the test runs (harness.differential)")
    config.stash[_POOL] = {}
    config.stash[_NUMBERS] = itertools.count(1)
    config.stash[_CHECKED] = {}
    config.stash[_IMAGES] = {}
    _check_options(config)


def _check_options(config) -> None:
    """A kernel or initramfs that cannot work stops the run before any guest starts, in one line."""
    if not hasattr(config.option, "guest_kernel"):
        return
    kernel, initrd = config.getoption("--guest-kernel"), config.getoption("--guest-initrd")
    problem = (kernel and kernel_problem(kernel, _option_backend(config))) or \
        (initrd and initrd_problem(initrd))
    if problem:
        raise pytest.UsageError(problem)


def _option_backend(config) -> str | None:
    """--guest-backend, with auto resolved (harness.backends.choose)."""
    backend = config.getoption("--guest-backend", None)
    if backend == AUTO:
        from harness.backends import choose
        return choose()[0]
    return backend


def pytest_report_header(config):
    if getattr(config.option, "guest_backend", None) == AUTO:
        from harness.backends import choose
        name, why = choose()
        return f"lguest-harness: --guest-backend auto chose {name}: {why}"
    return None


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("guest")
    # fixturenames is the closure: guest and guest_factory bring guest_backend in.
    if marker and "backends" in marker.kwargs and "guest_backend" in metafunc.fixturenames:
        backends = list(marker.kwargs["backends"])
        metafunc.parametrize("guest_backend", backends, indirect=True, ids=backends)


# -- building blocks --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def guest_kernel(pytestconfig) -> Path:
    """The kernel guests boot: --guest-kernel, or the recipe kernel (built on first use)."""
    explicit = pytestconfig.getoption("--guest-kernel")
    if explicit:
        return explicit
    from harness.kernel import ensure_kernel
    return ensure_kernel(log=terminal_say(pytestconfig)).vmlinux


def terminal_say(config):
    """A log function that reaches pytest's terminal even while output is captured (a kernel
    build takes minutes: the person waiting sees its progress)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(message: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"lguest-harness {message}")
    return say


@pytest.fixture(scope="session")
def guest_image(pytestconfig, tmp_path_factory) -> Path:
    """The default initramfs (--guest-initrd, or busybox with the harness's /init)."""
    explicit = pytestconfig.getoption("--guest-initrd")
    if explicit:
        return explicit
    from harness.initramfs import build_initramfs
    return build_initramfs(tmp_path_factory.mktemp("initramfs") / "initramfs.cpio")


@pytest.fixture
def guest_backend(request) -> str:
    """The backend under test: the marker's parametrised one, else --guest-backend (auto resolved),
    else kvm."""
    from harness.backends import lacks
    backend = getattr(request, "param", None) or _option_backend(request.config) or "kvm"
    missing = lacks(backend)
    if missing:
        pytest.skip(f"backend {backend} needs {missing}, which this host lacks")
    return backend


@pytest.fixture
def disk_image(tmp_path):
    """make(size_mb=16, fs="raw"|"ext4", source_dir=None, content=b"") -> Path of a new image."""
    counter = iter(range(1000))

    def make(size_mb: int = 16, fs: str = "raw", source_dir: Path | None = None, content: bytes = b"") -> Path:
        path = tmp_path / f"disk{next(counter)}.{fs}"
        if fs == "ext4":
            return disks.ext4_image(path, source_dir, size_mb)
        return disks.raw_image(path, size_mb, content)
    return make


@pytest.fixture
def tap_netns():
    """A fresh network namespace for a guest's tap; removed afterwards."""
    ns = netns.create()
    yield ns
    netns.remove(ns)


@pytest.fixture(scope="session")
def host_quirks() -> frozenset[str]:
    """The kernel option keys the launcher adds for this host's kind of KVM (launcher.hostquirks):
    a test that depends on the host kind asks this instead of assuming one."""
    from launcher.hostquirks import detect_host, kernel_options
    return frozenset(option.key for option in kernel_options(detect_host(), tsc_khz=None))


# -- guests -------------------------------------------------------------------------------
class _Booter:
    """Turns marker-style options into a GuestSpec and a booted Guest."""

    def __init__(self, request, kernel: Path, image: Path, backend: str, log_dir: Path):
        self.request, self.kernel, self.image = request, kernel, image
        self.backend, self.log_dir = backend, log_dir
        self.config = request.config

    def spec(self, mem=None, cmdline=(), block=(), net=None, rng=False, files=None, commands=(),
             backend=None, timeout=900.0, kernel=None, initrd=None, shares=(), transport=None, cpus=1,
             channel=True) -> GuestSpec:
        image = initrd or self.image
        shares = (shares,) if isinstance(shares, str) else tuple(shares)
        commands = (*share_mounts(shares), *commands)
        if files or commands:
            image = self.custom_image(files or {}, tuple(commands))
        blocks = (block,) if isinstance(block, (str, Path)) else tuple(block or ())
        ns = net if isinstance(net, netns.NetNamespace) else None
        cmd = tuple(DEFAULT_CMDLINE) + tuple(cmdline) + ((ns.guest_cmdline,) if ns else ())
        return GuestSpec(kernel=kernel or self.kernel, initrd=image, mem=mem or self.config.getoption("--guest-mem"),
                         cmdline=cmd, backend=backend or self.backend, block=tuple(str(b) for b in blocks),
                         net=(ns.tunnet,) if ns else (), rng=rng, netns=ns.name if ns else None,
                         timeout=timeout, share=tuple(str(s) for s in shares),
                         extra_args=(f"--transport={transport}",) if transport else (), cpus=cpus, channel=channel)

    def custom_image(self, files: dict, commands: tuple[str, ...]) -> Path:
        """One initramfs per distinct content for the session: identical marks give identical
        GuestSpecs, so they share one guest."""
        from harness.initramfs import build_initramfs
        key = _content_key(files, commands)
        images = self.config.stash[_IMAGES]
        if key not in images:
            images[key] = build_initramfs(self.log_dir / f"initramfs-{key}.cpio", extra_files=files,
                                          commands=commands)
        return images[key]

    def boot(self, spec: GuestSpec, name: str, wait: bool = True) -> Guest:
        guest = self.start(spec, name)
        if wait:
            _wait_ready(guest)
        return guest

    def start(self, spec: GuestSpec, name: str) -> Guest:
        """Check the kernel for this backend, start the launcher; the test's report gets the
        guest's logs from here on, so a guest that never gets ready still explains itself."""
        self.check(spec)
        guest = boot(spec, self.log_dir, name=name, wait=False)
        self.request.node.stash.setdefault(_GUESTS, []).append(guest)
        return guest

    def restore_fresh(self, spec: GuestSpec, name: str) -> Guest:
        """A guest restored from the spec's cached snapshot (a boot where snapshots are not supported)."""
        from harness.backends import register
        from launcher.hypervisor import backend_class, default_backend
        register()      # --guest-backend fake or qemu names the harness's backend
        if not backend_class(spec.backend or default_backend()).snapshots:
            return self.boot(spec, name)
        from harness import snapshots
        taken = self.config.stash.setdefault(_SNAPSHOTS, {})
        directory = taken.get(repr(spec))
        if directory is None:
            directory = taken[repr(spec)] = snapshots.cached(
                spec, self.log_dir, log=lambda m: print(f"lguest-harness: {m}", file=sys.stderr))
        guest = snapshots.restore(directory, self.log_dir, name, timeout=spec.timeout, netns=spec.netns)
        self.request.node.stash.setdefault(_GUESTS, []).append(guest)
        return guest

    def check(self, spec: GuestSpec) -> None:
        checked = self.config.stash[_CHECKED]
        key = (spec.kernel, spec.backend)
        if key not in checked:
            what = "--guest-kernel" if spec.kernel == self.config.getoption("--guest-kernel") else "kernel"
            checked[key] = kernel_problem(spec.kernel, spec.backend, what)
        problem = checked[key] or (spec.initrd and initrd_problem(spec.initrd, "initrd"))
        if problem:
            pytest.fail(problem, pytrace=False)


def _content_key(files: dict, commands: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for guest_path, content in sorted(files.items(), key=lambda item: str(item[0])):
        if isinstance(content, Path):
            mode = "x" if content.stat().st_mode & 0o111 else "-"
            data = content.read_bytes()
        else:
            mode, data = "-", content.encode() if isinstance(content, str) else bytes(content)
        digest.update(f"{guest_path}\0{mode}\0{len(data)}\0".encode() + data)
    for command in commands:
        digest.update(b"\1" + command.encode())
    return digest.hexdigest()[:16]


def _wait_ready(guest: Guest) -> None:
    try:
        guest.wait_ready(timeout=READY_TIMEOUT)
    except BaseException:
        guest.close()
        raise


def _booter(request, guest_kernel, guest_image, guest_backend, tmp_path_factory) -> _Booter:
    return _Booter(request, guest_kernel, guest_image, guest_backend, tmp_path_factory.mktemp("guests"))


def _shutdown(guest: Guest) -> None:
    if guest.child.isalive():
        try:
            guest.poweroff(timeout=30)
        except AssertionError:
            pass
    guest.close()


@pytest.fixture
def guest_factory(request, guest_kernel, guest_image, guest_backend, tmp_path_factory):
    """make(name=None, wait=True, fresh=False, **marker_options) -> Guest (kernel= and initrd=
    override the session's); every guest it boots is shut down after the test.  wait=False
    returns at once, before the ready marker (for guests that are expected not to get there);
    fresh=True restores the guest from the session's snapshot of that spec (as the marker's
    fresh=True does), and throws it away after the test."""
    booter = _booter(request, guest_kernel, guest_image, guest_backend, tmp_path_factory)
    booted: list[Guest] = []
    restored: list[Guest] = []

    def make(name: str | None = None, wait: bool = True, fresh: bool = False, **options) -> Guest:
        name = name or f"guest{len(booted) + len(restored) + 1}"
        if fresh:
            restored.append(booter.restore_fresh(booter.spec(**options), name))
            return restored[-1]
        booted.append(booter.boot(booter.spec(**options), name, wait))
        return booted[-1]
    yield make
    for guest in booted:
        _shutdown(guest)
    for guest in restored:
        guest.close()


@pytest.fixture
def guest(request, guest_kernel, guest_image, guest_backend, tmp_path_factory) -> Guest:
    """A booted guest, shared by the tests of a module that ask for the same one."""
    marker = request.node.get_closest_marker("guest")
    options = dict(marker.kwargs) if marker else {}
    options.pop("backends", None)
    scope = options.pop("scope", "module")
    fresh = options.pop("fresh", False)
    if options.get("net") is True:
        options["net"] = request.getfixturevalue("tap_netns") if scope == "function" else \
            _shared_netns(request, scope)
    if options.get("block") is True:
        options["block"] = disks.raw_image(tmp_path_factory.mktemp("disk") / "disk.raw")
    booter = _booter(request, guest_kernel, guest_image, guest_backend, tmp_path_factory)
    spec = booter.spec(**options)
    try:
        if fresh:
            guest = booter.restore_fresh(spec, "guest")
            request.addfinalizer(guest.close)      # thrown away, not powered off: nothing follows it
            return guest
        if scope == "function":
            guest = booter.boot(spec, "guest")
            request.addfinalizer(lambda: _shutdown(guest))
            return guest
        return _pooled(request, booter, spec, scope)
    except GuestError as err:     # the cause is in the message; the plugin's traceback is noise
        failure = f"{type(err).__name__}: {err}"
    pytest.fail(failure, pytrace=False)


def _owner(request, scope: str):
    return request.session if scope == "session" else request.node.getparent(pytest.Module)


def _shared_netns(request, scope: str) -> netns.NetNamespace:
    pool = request.config.stash[_POOL]
    key = ("netns", _owner(request, scope).nodeid)
    if key not in pool:
        pool[key] = netns.create()
        _owner(request, scope).addfinalizer(lambda: netns.remove(pool.pop(key)))
    return pool[key]


class _BootFailed:
    """A shared guest that did not boot: the tests that share it fail with its cause, without
    booting it again (a kernel that times out would cost each of them minutes)."""

    def __init__(self, guest: Guest, error: GuestError, nodeid: str):
        self.guest, self.error, self.nodeid = guest, error, nodeid


def _pooled(request, booter: _Booter, spec: GuestSpec, scope: str) -> Guest:
    pool = request.config.stash[_POOL]
    owner = _owner(request, scope)
    key = (owner.nodeid, spec)
    guest = pool.get(key)
    if isinstance(guest, _BootFailed):
        request.node.stash.setdefault(_GUESTS, []).append(guest.guest)
        raise type(guest.error)(f"not booted again: it failed for {guest.nodeid}\n{guest.error}")
    if guest is None or not guest.child.isalive():
        first = key not in pool
        if guest is not None:
            guest.close()           # a dead or stopped guest is replaced, not reused
        guest = booter.start(spec, f"guest{next(request.config.stash[_NUMBERS])}")
        try:
            _wait_ready(guest)
        except GuestError as err:
            pool[key] = _BootFailed(guest, err, request.node.nodeid)
            raise
        pool[key] = guest
        if first:                   # one release per pool key, whatever replaced its guest since

            def release(key=key):
                shared = pool.pop(key, None)
                if isinstance(shared, Guest):
                    _shutdown(shared)
            owner.addfinalizer(release)
    else:
        request.node.stash.setdefault(_GUESTS, []).append(guest)
    return guest


# -- differential runs ---------------------------------------------------------------------
@pytest.fixture
def differential(request, guest_kernel, guest_image, tmp_path_factory):
    """The guest of the test's differential marker on two backends (harness.differential):
    booted side by side, each with its own copy of the marker's disks; shut down after the test."""
    from harness.backends import lacks
    from harness.differential import DEFAULT_PAIR, Differential, make_disk
    marker = request.node.get_closest_marker("differential")
    options = dict(marker.kwargs) if marker else {}
    chosen = request.config.getoption("--guest-differential")
    pair = tuple(options.pop("backends", None) or (chosen.split(",") if chosen else DEFAULT_PAIR))
    for backend in pair:
        if lacks(backend):
            pytest.skip(f"backend {backend} needs {lacks(backend)}, which this host lacks")
    items, runs = options.pop("block", ()), Differential({})
    for backend in pair:
        booter = _booter(request, guest_kernel, guest_image, backend, tmp_path_factory)
        copies = [make_disk(item, booter.log_dir / f"disk{i}.img") for i, item in enumerate(items)]
        guest = booter.start(booter.spec(block=copies, **options), backend)
        request.addfinalizer(lambda guest=guest: _shutdown(guest))
        runs.guests[backend], runs.disks[backend] = guest, copies
    for guest in runs.guests.values():     # booted side by side: the slower one sets the pace
        _wait_ready(guest)
    return runs


# -- KTAP results as tests -------------------------------------------------------------------
@pytest.fixture
def ktap(request):
    """run(guest, command, timeout=120) -> KtapResult, reporting each subtest as its own result.

    Subtests count in the run's totals; a failing one also fails the test that ran it."""

    def run(guest: Guest, command: str, timeout: float = 120) -> ktap_parser.KtapResult:
        result = ktap_parser.parse(guest.run(command, timeout=timeout).output)
        cases = result.all_cases()
        request.session.testscollected += len(cases)      # progress stays within 100 %
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            for case in cases:
                _report_case(request.node, case)
        request.node.stash.setdefault(_KTAP_FAILED, []).extend(c for c in cases if c.status == "fail")
        return result
    return run


def _report_case(item, case: ktap_parser.Case) -> None:
    nodeid = f"{item.nodeid}::{case.name}"
    path, line, _ = item.location
    if case.status == "skip":
        outcome, longrepr = "skipped", (str(path), (line or 0) + 1, f"Skipped: {case.directive}")
    elif case.status == "fail":
        outcome, longrepr = "failed", "\n".join((f"not ok {case.number} {case.name}", *case.diagnostics))
    else:
        outcome, longrepr = "passed", None
    report = TestReport(nodeid, (path, line, f"{item.name}::{case.name}"), {}, outcome, longrepr, "call")
    item.ihook.pytest_runtest_logreport(report=report)


def _fail_for_subtests(item, report) -> None:
    """A test whose KTAP subtests failed is not a pass."""
    failed = item.stash.get(_KTAP_FAILED, [])
    if report.when == "call" and report.passed and failed:
        report.outcome = "failed"
        report.longrepr = f"{len(failed)} KTAP subtest(s) failed: " + ", ".join(
            f"{c.name} (not ok {c.number})" for c in failed)


# -- failure artifacts ------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    _fail_for_subtests(item, report)
    guests = item.stash.get(_GUESTS, [])
    if not report.failed or not guests:
        return
    keep = item.config.getoption("--guest-keep-logs")
    attached = item.stash.setdefault(_ATTACHED, set())
    for guest in guests:
        if id(guest) in attached:
            continue
        attached.add(id(guest))
        serial, launcher = readable(guest.serial_log)[-REPORT_CHARS:], guest.launcher_log[-REPORT_CHARS:]
        # Sections show in the terminal (and in junit system-out with junit_logging);
        # the item's user properties always reach --junitxml (with its teardown report).
        report.sections.append((f"Captured stdout guest serial log ({guest.name})", serial))
        report.sections.append((f"Captured stderr launcher log ({guest.name})", launcher))
        item.user_properties += [(f"guest serial log ({guest.name})", serial),
                                   (f"launcher log ({guest.name})", launcher)]
        if keep:
            _save_logs(Path(keep) / _safe(item.nodeid), guest)
    if call.excinfo is not None and call.excinfo.errisinstance(GuestTimeout):
        _stop_after_timeout(report, guests)


def _stop_after_timeout(report, guests: list[Guest]) -> None:
    """A command that timed out may still be running: a shared guest must not hand it to the
    next test, so it is stopped (after its logs are read) and the pool boots a fresh one."""
    for guest in guests:
        if guest.child.isalive():
            guest.close()
    report.sections.append(("guest stopped", "a command timed out, so its guest was stopped; "
                                             "the next test that shares it gets a fresh one"))


def _safe(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")


def _save_logs(directory: Path, guest: Guest) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{guest.name}.serial.log").write_text(readable(guest.serial_log))     # for people
    (directory / f"{guest.name}.serial.raw.log").write_text(guest.serial_log)          # byte for byte
    (directory / f"{guest.name}.launcher.log").write_text(guest.launcher_log)
