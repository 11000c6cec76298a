"""cffi build script for native._kvm: setup.py's cffi_modules compiles it when the package is built.

`pip install .`, `pip install -e .` and `pip wheel .` all run it, so an installed
lguest-harness carries a ready extension and needs no compiler at run time.  It is
executed by path (cffi does not import it), so kvm_cdef.py is loaded by path too.
"""
import runpy
from pathlib import Path

import cffi

_decls = runpy.run_path(str(Path(__file__).with_name("kvm_cdef.py")))

ffibuilder = cffi.FFI()
ffibuilder.cdef(_decls["CDEF"] + _decls["DIGEST_CDEF"])
ffibuilder.set_source("native._kvm", _decls["SOURCE"] + _decls["digest_source"]())

if __name__ == "__main__":  # by hand: python3 native/kvm_build.py puts native/_kvm*.so in place
    ffibuilder.compile(tmpdir=str(Path(__file__).resolve().parent.parent), verbose=True)
