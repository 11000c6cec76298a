"""The cffi KVM bindings: compiled from the system headers, ioctl errors come back as -errno."""
import errno
import os

import pytest

from native import build
from native.kvm import ffi, lib


def test_layouts_come_from_the_headers():
    # kvm_regs is 18 u64 registers; kvm_run's exit union follows the 32-byte header.
    assert ffi.sizeof("struct kvm_regs") == 18 * 8
    assert lib.LH_RUN_EXIT_REASON == 8
    assert lib.LH_RUN_PAYLOAD == 32
    assert lib.KVM_RUN == 0xAE80


def test_ioctl_on_a_non_kvm_fd_returns_minus_errno():
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert lib.lh_ioctl_int(fd, lib.KVM_GET_API_VERSION, 0) == -errno.ENOTTY
    finally:
        os.close(fd)


@pytest.mark.kvm
def test_kvm_api_version():
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert lib.lh_ioctl_int(fd, lib.KVM_GET_API_VERSION, 0) == lib.KVM_API_VERSION == 12
    finally:
        os.close(fd)


def test_a_broken_source_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(build.NativeBuildError, match="apt-get install build-essential"):
        build.load("broken", "int lh_nothing(void);", "#include <no/such/header.h>\n")
