"""The packaged virtiofsd, really started: handshake, read-only view, failures in one line."""
import os
import signal
import threading

import pytest

from launcher.devspec import DeviceSpecError, parse_share
from launcher.io.vhost_user import F_PROTOCOL_FEATURES, ProtocolFeature
from launcher.io.virtiofsd import Virtiofsd, VirtiofsdError, find_virtiofsd

VERSION_1 = 32


def _have_virtiofsd() -> bool:
    try:
        find_virtiofsd()
    except VirtiofsdError:
        return False
    return os.geteuid() == 0


needs_virtiofsd = pytest.mark.skipif(not _have_virtiofsd(), reason="virtiofsd (qemu-system-common) and root needed")


@needs_virtiofsd
def test_virtiofsd_starts_and_answers_the_handshake(tmp_path):
    daemon = Virtiofsd.start(str(tmp_path), name="virtiofsd under test")
    try:
        features = daemon.frontend.features
        assert features >> VERSION_1 & 1 and features >> F_PROTOCOL_FEATURES & 1
        assert daemon.frontend.protocol_features >> ProtocolFeature.REPLY_ACK & 1
        assert daemon.process.poll() is None
    finally:
        daemon.close()
    assert daemon.process.poll() is not None
    assert not os.path.exists(daemon.workdir)


@needs_virtiofsd
def test_a_killed_virtiofsd_is_reported_once_with_its_status(tmp_path):
    daemon = Virtiofsd.start(str(tmp_path), name="virtiofsd for t")
    said, done = [], threading.Event()
    daemon.on_death = lambda reason: (said.append(reason), done.set())
    os.kill(daemon.process.pid, signal.SIGKILL)
    assert done.wait(10)
    daemon.close()
    assert len(said) == 1
    assert said[0].startswith(f"virtiofsd for t (pid {daemon.process.pid}) exited with status -9")


def test_a_missing_virtiofsd_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("LGUEST_HARNESS_VIRTIOFSD", str(tmp_path / "nope"))
    with pytest.raises(VirtiofsdError, match="not an executable file"):
        Virtiofsd.start(str(tmp_path))
    monkeypatch.delenv("LGUEST_HARNESS_VIRTIOFSD")
    monkeypatch.setattr("launcher.io.virtiofsd.CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VirtiofsdError, match="virtiofsd not found.*qemu-system-common"):
        Virtiofsd.start(str(tmp_path))


def test_a_virtiofsd_that_fails_to_start_says_what_it_said(tmp_path, monkeypatch):
    fake = tmp_path / "virtiofsd"
    fake.write_text("#!/bin/sh\necho 'fuse: unknown option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LGUEST_HARNESS_VIRTIOFSD", str(fake))
    with pytest.raises(VirtiofsdError, match="exited with status 1 before listening; it said: fuse: unknown option"):
        Virtiofsd.start(str(tmp_path))


def test_share_flag_rules(tmp_path):
    spec = parse_share(f"{tmp_path}:data:ro")
    assert (spec.source, spec.tag, spec.read_only) == (str(tmp_path), "data", True)
    assert not parse_share(f"{tmp_path}:data").read_only
    with pytest.raises(DeviceSpecError, match="no such directory"):
        parse_share(f"{tmp_path}/missing:data")
    with pytest.raises(DeviceSpecError, match="HOSTDIR:TAG"):
        parse_share(str(tmp_path))
    with pytest.raises(DeviceSpecError, match="tag"):
        parse_share(f"{tmp_path}:{'x' * 40}")


@needs_virtiofsd
def test_a_read_only_share_of_the_whole_root_starts(tmp_path):
    """Its socket and pid file sit inside the read-only tree: they stay writable, nothing else."""
    daemon = Virtiofsd.start("/", read_only=True, name="virtiofsd for /")
    try:
        assert daemon.frontend.features >> VERSION_1 & 1
    finally:
        daemon.close()
