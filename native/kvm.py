"""KVM structures, ioctl numbers and an ioctl() that releases the GIL, from <linux/kvm.h>.

An installed lguest-harness (pip install / pip wheel) carries native._kvm, compiled
from native/kvm_build.py when the package was built, and this module re-exports its
ffi and lib.  A source tree that was never built, or whose extension predates the
current kvm_cdef.py, falls back to compiling the bindings on first use (see native.build).
"""
from native.kvm_cdef import CDEF, SOURCE, digest


def packaged():
    """The native._kvm extension if it is importable and built from the current declarations."""
    try:
        from native import _kvm
    except ImportError:
        return None
    if getattr(_kvm.lib, "LH_BINDINGS_DIGEST", None) != digest():
        return None
    return _kvm


_module = packaged()
if _module is not None:
    ffi, lib = _module.ffi, _module.lib
else:
    from native.build import load

    ffi, lib = load("kvm", CDEF, SOURCE)
