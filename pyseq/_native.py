"""The thin layer over the C core: the cffi modules, with the C names kept (pynacl's split).

``lib`` releases the GIL around every call (use it for anything that can wait); ``hot`` holds the
same non-blocking single-message calls with the GIL kept (see csrc/build_ffi.py).
"""
from __future__ import annotations

from ._hot_ffi import lib as hot  # built by csrc/build_ffi.py at install time
from ._native_ffi import ffi, lib

__all__ = ["ffi", "lib", "hot"]
