"""KVM structures, ioctl numbers and an ioctl() that releases the GIL, from <linux/kvm.h>.

Importing this module compiles the bindings on first use (see native.build).
"""
from native.build import load
from native.kvm_cdef import CDEF, SOURCE

ffi, lib = load("kvm", CDEF, SOURCE)
