"""A full memory barrier, from C: the one fence Python has no spelling for.

lh_full_fence() is __atomic_thread_fence(__ATOMIC_SEQ_CST): an mfence (or a locked
instruction) on x86, dmb ish on arm64.  It is part of the native bindings built when the
package is installed (native.kvm: native._kvm, or a first-use compile in a source tree);
launcher.barrier falls back to something slower if they cannot be had.
"""
from native.kvm import ffi, lib  # noqa: F401
