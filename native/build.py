"""Compile a cffi module (API mode) on first use and cache it by a hash of its C text.

The cache lives in $XDG_CACHE_HOME/lguest-harness/native/<hash>/ (default
~/.cache/...), so a changed cdef or source gets a fresh build and an unchanged one
is imported straight away.  A missing compiler or header is reported as one
NativeBuildError naming what to install, never as a distutils traceback.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

INSTALL_HINT = "install a C compiler and the kernel headers: apt-get install build-essential linux-libc-dev python3-dev"


class NativeBuildError(RuntimeError):
    """The cffi extension could not be compiled or imported."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lguest-harness" / "native"


def _module_name(stem: str, cdef: str, source: str) -> str:
    import cffi

    digest = hashlib.sha256("\0".join((cdef, source, cffi.__version__, sys.version)).encode())
    return f"_lh_{stem}_{digest.hexdigest()[:16]}"


def _import_from(path: Path, name: str):
    for candidate in path.glob(f"{name}*.so"):
        spec = importlib.util.spec_from_file_location(name, candidate)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return None


def _compile(name: str, cdef: str, source: str, dest: Path) -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, source)
    dest.mkdir(parents=True, exist_ok=True)
    # Build in a private directory and rename into place: concurrent first imports
    # (pytest workers, two launchers) never see a half-written module.
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        except Exception as exc:  # distutils/setuptools raise several unrelated types
            raise NativeBuildError(f"compiling the {name} cffi module failed ({exc}); {INSTALL_HINT}") from exc
        os.replace(built, dest / built.name)


def load(stem: str, cdef: str, source: str):
    """Return (ffi, lib) of the module built from cdef/source, compiling it if needed."""
    name = _module_name(stem, cdef, source)
    dest = cache_root() / name
    module = _import_from(dest, name)
    if module is None:
        _compile(name, cdef, source, dest)
        module = _import_from(dest, name)
    if module is None:
        raise NativeBuildError(f"the compiled {name} module is missing from {dest}; {INSTALL_HINT}")
    return module.ffi, module.lib
