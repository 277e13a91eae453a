# The documented cffi way to build an extension at install time; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder", "csrc/build_ffi.py:hotbuilder"])
