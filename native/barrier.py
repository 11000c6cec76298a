"""A full memory barrier, from C: the one fence Python has no spelling for.

lh_full_fence() is __atomic_thread_fence(__ATOMIC_SEQ_CST): an mfence (or a locked
instruction) on x86, dmb ish on arm64.  Importing this module compiles it on first use
(see native.build); launcher.barrier falls back to something slower if that fails.
"""
from native.build import load

CDEF = "void lh_full_fence(void);"
SOURCE = "void lh_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }"

ffi, lib = load("barrier", CDEF, SOURCE)
