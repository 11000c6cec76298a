"""The cffi KVM bindings: compiled from the system headers, ioctl errors come back as -errno."""
import errno
import json
import os
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import native
from native import build, kvm, kvm_cdef
from native.kvm import ffi, lib

NATIVE_DIR = Path(native.__file__).resolve().parent


def _installed_as():
    """How the imported native package was installed: "wheel", "editable" or None (a bare source tree)."""
    for dist in metadata.distributions(name="lguest-harness"):
        if dist.read_text("INSTALLER") is None:
            continue  # a build's lguest_harness.egg-info in the source tree, not an installation
        for f in dist.files or ():
            if f.as_posix() == "native/__init__.py" and Path(dist.locate_file(f)).resolve() == NATIVE_DIR / "__init__.py":
                return "wheel"
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable") and direct.get("url") == NATIVE_DIR.parent.as_uri():
            return "editable"
    return None


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


def test_an_installed_package_uses_the_extension_built_at_install_time():
    how = _installed_as()
    if how is None:
        pytest.skip(f"{NATIVE_DIR} is not the installed lguest-harness (a bare source tree uses the fallback build)")
    module = kvm._module
    assert module is not None, (f"{how} install without a current native._kvm: the bindings were compiled at "
                                "first use instead; pip install (-e) . builds them (see setup.py)")
    assert module.__name__ == "native._kvm"
    assert Path(module.__file__).resolve().parent == NATIVE_DIR
    assert (ffi, lib) == (module.ffi, module.lib)
    assert lib.LH_BINDINGS_DIGEST == kvm_cdef.digest()


def test_an_extension_built_from_other_declarations_is_not_used(monkeypatch):
    stale = types.ModuleType("native._kvm")
    stale.ffi, stale.lib = ffi, types.SimpleNamespace(LH_BINDINGS_DIGEST=kvm_cdef.digest() ^ 1)
    monkeypatch.setitem(sys.modules, "native._kvm", stale)
    monkeypatch.setattr(native, "_kvm", stale, raising=False)
    assert kvm.packaged() is None
    stale.lib.LH_BINDINGS_DIGEST = kvm_cdef.digest()
    assert kvm.packaged() is stale
