"""The cffi builders (API, out-of-line mode), run by ``pip install .`` through setup.py's cffi_modules.

- ``pyseq._native_ffi``: every C function; cffi releases the GIL around each call, so waits and
  batch copies run while other Python threads go on.
- ``pyseq._hot_ffi``: the few non-blocking single-message calls (``ring_hot.cdef``) again, with the
  GIL kept: they never wait and cost less than a GIL release and re-acquire.  It includes the types
  of ``_native_ffi``, so the same cdata pointers go to both.

Every ``<module>.cdef`` beside this file declares the C module ``<module>.c``/``.h``.
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
MODULES = ["ring"]
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]
SOURCES = [str((HERE / f"{m}.c").relative_to(ROOT)) for m in MODULES]
INCLUDES = "\n".join(f'#include "{m}.h"' for m in MODULES) + "\n"
KEEP_GIL = """
/* cffi wraps each call in Py_BEGIN/END_ALLOW_THREADS; in this module they only open a block. */
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
"""


def _builder(module: str, cdefs: list[str], preamble: str, include: FFI | None = None) -> FFI:
    ffi = FFI()
    if include is not None:
        ffi.include(include)
    for name in cdefs:
        ffi.cdef((HERE / name).read_text())
    ffi.set_source(module, preamble + INCLUDES, sources=SOURCES, include_dirs=[str(HERE.relative_to(ROOT))],
                   extra_compile_args=CFLAGS, libraries=["rt"])
    return ffi


ffibuilder = _builder("pyseq._native_ffi", [f"{m}.cdef" for m in MODULES], "#include <sys/mman.h>\n")
hotbuilder = _builder("pyseq._hot_ffi", ["ring_hot.cdef"], KEEP_GIL, include=ffibuilder)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    hotbuilder.compile(verbose=True)
