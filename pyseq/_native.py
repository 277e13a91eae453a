"""The thin layer over the C core, with the C names kept (pynacl's split).

``ffi``/``lib``: the cffi binding of every C function (the GIL is released around each call).
``HotWriter``/``HotReader``: the per-message calls bound through the CPython API (csrc/fast.c).
"""
from __future__ import annotations

from ._fast import HotReader, HotWriter  # built from csrc/fast.c at install time
from ._native_ffi import ffi, lib  # built by csrc/build_ffi.py at install time

__all__ = ["ffi", "lib", "HotReader", "HotWriter"]


def address(cdata: object) -> int:
    """The address of a cffi pointer or array, for the CPython binding."""
    return int(ffi.cast("uintptr_t", cdata))
