# Everything else is in pyproject.toml: setuptools takes cffi_modules only as a setup() argument.
from setuptools import setup

setup(cffi_modules=["native/kvm_build.py:ffibuilder"])
