"""The cffi builder (API, out-of-line mode), run by ``pip install .`` through setup.py's cffi_modules.

``pyseq._native_ffi`` binds every C function; cffi releases the GIL around each call, so waits and
batch copies run while other Python threads go on.  Every ``<module>.cdef`` beside this file declares
the C module ``<module>.c``/``.h``.  (The per-message hot calls also have a CPython binding,
csrc/fast.c, because cffi's argument conversion costs more than they do.)
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
MODULES = ["ring", "sequencer", "crc32c", "journal"]
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]
SOURCES = [str((HERE / f"{m}.c").relative_to(ROOT)) for m in MODULES]
INCLUDES = "\n".join(f'#include "{m}.h"' for m in MODULES) + "\n"
ffibuilder = FFI()
for _module in MODULES:
    ffibuilder.cdef((HERE / f"{_module}.cdef").read_text())
ffibuilder.set_source("pyseq._native_ffi", "#include <sys/mman.h>\n" + INCLUDES, sources=SOURCES,
                      include_dirs=[str(HERE.relative_to(ROOT))], extra_compile_args=CFLAGS, libraries=["rt"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
