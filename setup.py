# The documented cffi way to build at install time (cffi_modules), plus the small CPython shim for the
# per-message hot calls (csrc/fast.c explains why); everything else is in pyproject.toml.
from setuptools import Extension, setup

CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]

setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    ext_modules=[Extension("pyseq._fast", sources=["csrc/fast.c", "csrc/ring.c"], include_dirs=["csrc"],
                           extra_compile_args=CFLAGS)],
)
