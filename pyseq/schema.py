"""Message declarations: one fixed layout per message type and version.

A message type is declared once, as a class, and everything else is derived from it: the numpy
structured dtype, a precompiled :class:`struct.Struct`, encode/decode, and a C header::

    class Order(Record, msg_type=10, version=1):
        order_id: u64
        price: f64
        qty: i32 = 0            # a default
        symbol: string(8)
        blob: raw(4) = b""

    o = Order(order_id=1, price=10.5, symbol="AAPL")
    Order.decode(o.encode()) == o

A field may also be written ``order_id: Annotated[int, u64]``, ``symbol: Annotated[str, string(8)]``:
the same field, in a form mypy understands (it rejects ``u64`` and ``string(8)`` as types).

Instances are immutable and hashable.  Like a namedtuple, a record *is* a tuple of its field values
in declaration order (that is what makes construction, encode and decode cheap), but it compares
equal only to a record of the same class.  Values are checked when a record is built, so a record
that exists can always be encoded; a bad value raises :class:`SchemaError` naming the field.

Layout rules
------------
These hold for the ``struct`` codec, the numpy dtype and the C header alike:

* Little-endian, whatever the host.
* Packed in declaration order with no implicit padding: a field's offset is the sum of the sizes of
  the fields before it, and ``size`` is the sum of all of them.  A C struct declared with
  ``__attribute__((packed))`` (see :func:`c_header`) has the same layout.
* Kinds and sizes::

      i8 i16 i32 i64    signed integers, 1/2/4/8 bytes, two's complement
      u8 u16 u32 u64    unsigned integers, 1/2/4/8 bytes
      f32 f64           IEEE-754 binary32/binary64 (an f32 value is rounded to binary32 when built)
      boolean           1 byte: written 0 or 1; any non-zero byte reads as True
      string(n)         n bytes of UTF-8, NUL-padded, with no terminator when full; may not hold NUL;
                        decodes to str with trailing NULs stripped
      raw(n)            n bytes, NUL-padded; decodes to bytes of exactly n (padding kept)

Versioning
----------
A message type evolves by appending fields only; each version is its own class with the same
``msg_type`` and a higher ``version`` (:func:`check_compatible` checks the rule).  ``decode`` of:

* a payload longer than ``size`` (from a newer version) reads the known prefix and ignores the rest;
* a payload shorter than ``size`` that ends exactly at a field boundary (from an older version)
  fills the missing trailing fields with their defaults; a missing field without one is an error;
* any other length is an error naming the expected and actual lengths.

So appended fields should have defaults, or older payloads cannot be read.

Registry
--------
Declaring a class registers it under ``(msg_type, version)``.  Re-declaring the same qualified name
(a re-import or reload) replaces the entry; a different class for a taken pair is an error.
:func:`lookup` gives the newest version of a type, or a given one; :func:`registered` the newest of
every type.  :func:`separate_registry` declares records without registering them in the process's
registry (to load two versions of one schema side by side).
"""
from __future__ import annotations

import collections
import contextlib
import enum
import inspect
import numbers
import operator
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from struct import Struct
from struct import error as StructError
from typing import Annotated, Any, ClassVar, TypeVar, cast, get_args, get_origin

import numpy as np

from .errors import SchemaCompatibilityError, SchemaError

__all__ = [
    "MISSING", "Field", "Kind", "Record",
    "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64", "boolean", "string", "raw",
    "lookup", "registered", "separate_registry", "check_compatible", "c_header",
]


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing.MISSING
"""The ``default`` of a :class:`Field` that has none."""


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _reject_missing(value: object, where: str) -> None:
    if value is MISSING:
        raise SchemaError(f"{where} is missing and has no default")


# --------------------------------------------------------------------------------------- kinds

@dataclass(frozen=True, repr=False)
class Kind:
    """The type of a field: its size, its codes for struct, numpy and C, and its value check."""

    name: str       # as written in a declaration: "u64", "string(8)"
    code: str       # struct format code, without byte order
    size: int       # bytes
    numpy: str      # numpy dtype string, explicit byte order
    c_type: str
    c_dims: str     # "" or "[n]"
    value_type: ClassVar[type] = object  # what a field of this kind holds in Python

    def __repr__(self) -> str:
        return self.name

    def check(self, value: object, where: str) -> Any:
        """Return ``value`` normalised for this kind, or raise :class:`SchemaError`."""
        raise NotImplementedError

    def guard(self, var: str) -> str:
        """A Python expression, true when ``var`` needs no :meth:`check` (the fast path)."""
        return "False"

    def to_wire(self, var: str) -> str:
        """A Python expression turning the value in ``var`` into what ``struct`` packs."""
        return var

    def from_wire(self, var: str) -> str:
        """A Python expression turning what ``struct`` unpacked in ``var`` into the value."""
        return var

    def from_wire_value(self, raw: Any, where: str) -> Any:
        """:meth:`from_wire` as a function: the slow path, with errors naming the field."""
        return raw


@dataclass(frozen=True, repr=False)
class _IntKind(Kind):
    value_type = int
    lo: int
    hi: int

    def check(self, value: object, where: str) -> int:
        _reject_missing(value, where)
        if isinstance(value, (bool, np.bool_)):
            raise SchemaError(f"{where}: expected an integer for {self.name}, got {_describe(value)}")
        try:
            number = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise SchemaError(
                f"{where}: expected an integer for {self.name}, got {_describe(value)}") from None
        if not self.lo <= number <= self.hi:
            raise SchemaError(
                f"{where}: {number} is out of range for {self.name} ({self.lo}..{self.hi})")
        return number

    def guard(self, var: str) -> str:
        return f"_type({var}) is _int and {self.lo} <= {var} <= {self.hi}"


_F32 = Struct("<f")


@dataclass(frozen=True, repr=False)
class _FloatKind(Kind):
    value_type = float

    def check(self, value: object, where: str) -> float:
        _reject_missing(value, where)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise SchemaError(
                f"{where}: expected a real number for {self.name}, got {_describe(value)}")
        try:
            number = float(value)
            if self.size == 4:
                number = _F32.unpack(_F32.pack(number))[0]
        except (OverflowError, StructError):
            raise SchemaError(f"{where}: {value!r} is out of range for {self.name}") from None
        return number

    def guard(self, var: str) -> str:
        return f"_type({var}) is _float" if self.size == 8 else "False"


@dataclass(frozen=True, repr=False)
class _BoolKind(Kind):
    value_type = bool

    def check(self, value: object, where: str) -> bool:
        _reject_missing(value, where)
        if not isinstance(value, (bool, np.bool_)):
            raise SchemaError(f"{where}: expected a bool for {self.name}, got {_describe(value)}")
        return bool(value)

    def guard(self, var: str) -> str:
        return f"_type({var}) is _bool"


@dataclass(frozen=True, repr=False)
class _StringKind(Kind):
    value_type = str

    def check(self, value: object, where: str) -> str:
        _reject_missing(value, where)
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a str for {self.name}, got {_describe(value)}")
        text = str(value)
        if "\x00" in text:
            raise SchemaError(f"{where}: {text!r} contains NUL, which a string field cannot hold")
        try:
            length = len(text.encode())
        except UnicodeEncodeError as exc:
            raise SchemaError(f"{where}: {text!r} cannot be encoded as UTF-8 ({exc.reason})") from None
        if length > self.size:
            raise SchemaError(
                f"{where}: {text!r} is {length} bytes in UTF-8, longer than {self.name}")
        return text

    def guard(self, var: str) -> str:
        return (f"_type({var}) is _str and _len({var}) <= {self.size} and {var}.isascii() "
                f"and '\\x00' not in {var}")

    def to_wire(self, var: str) -> str:
        return f"{var}.encode()"

    def from_wire(self, var: str) -> str:
        return f"{var}.rstrip(b'\\x00').decode()"

    def from_wire_value(self, raw: Any, where: str) -> str:
        try:
            return bytes(raw).rstrip(b"\x00").decode()
        except UnicodeDecodeError:
            raise SchemaError(f"{where}: payload bytes {bytes(raw)!r} are not valid UTF-8") from None


@dataclass(frozen=True, repr=False)
class _RawKind(Kind):
    value_type = bytes

    def check(self, value: object, where: str) -> bytes:
        _reject_missing(value, where)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SchemaError(f"{where}: expected bytes, bytearray or memoryview for {self.name}, "
                              f"got {_describe(value)}")
        data = bytes(value)
        if len(data) > self.size:
            raise SchemaError(f"{where}: {len(data)} bytes is longer than {self.name}")
        return data.ljust(self.size, b"\x00")

    def guard(self, var: str) -> str:
        return f"_type({var}) is _bytes and _len({var}) == {self.size}"


def _int_kind(bits: int, signed: bool) -> _IntKind:
    size = bits // 8
    name = f"{'i' if signed else 'u'}{bits}"
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
    return _IntKind(name, code if signed else code.upper(), size, f"<{name[0]}{size}",
                    f"{'' if signed else 'u'}int{bits}_t", "", lo, hi)


i8, i16, i32, i64 = (_int_kind(bits, True) for bits in (8, 16, 32, 64))
u8, u16, u32, u64 = (_int_kind(bits, False) for bits in (8, 16, 32, 64))
f32 = _FloatKind("f32", "f", 4, "<f4", "float", "")
f64 = _FloatKind("f64", "d", 8, "<f8", "double", "")
boolean = _BoolKind("boolean", "?", 1, "|b1", "uint8_t", "")


def _check_size(factory: str, size: object) -> int:
    if type(size) is not int or size < 1:
        raise SchemaError(f"{factory}(size) needs a positive int size, got {_describe(size)}")
    return size


def string(size: int) -> Kind:
    """A UTF-8 text field of exactly ``size`` bytes, NUL-padded."""
    n = _check_size("string", size)
    return _StringKind(f"string({n})", f"{n}s", n, f"|S{n}", "char", f"[{n}]")


def raw(size: int) -> Kind:
    """A bytes field of exactly ``size`` bytes, NUL-padded."""
    n = _check_size("raw", size)
    return _RawKind(f"raw({n})", f"{n}s", n, f"|V{n}", "uint8_t", f"[{n}]")


@dataclass(frozen=True)
class Field:
    """One field of a record, in declaration order."""

    name: str
    kind: Kind
    size: int
    offset: int
    default: Any = MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING


# -------------------------------------------------------------------------------------- record

R = TypeVar("R", bound="Record")

_C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline
    int long register restrict return short signed sizeof static struct switch typedef union unsigned
    void volatile while alignas alignof bool constexpr false nullptr static_assert thread_local true
    typeof typeof_unqual""".split())

# Names the generated code binds; field names never start with "_", so they cannot collide.
_CODEGEN_GLOBALS: dict[str, Any] = {
    "_type": type, "_int": int, "_float": float, "_bool": bool, "_str": str, "_bytes": bytes,
    "_len": len, "_memoryview": memoryview, "_tnew": tuple.__new__, "MISSING": MISSING,
}


class _RecordMeta(type):
    """Turns a class body of annotated fields into a record class (see :class:`Record`)."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any],
                msg_type: int | None = None, version: int = 1, **unknown: Any) -> _RecordMeta:
        if not any(isinstance(base, _RecordMeta) for base in bases):
            return super().__new__(mcs, name, bases, ns)  # Record itself
        if unknown:
            raise SchemaError(f"{name}: unknown class keyword {', '.join(map(repr, unknown))}; "
                              f"a record takes msg_type and version")
        if bases != (Record,):
            raise SchemaError(f"{name}: a record derives from Record alone; declare each version "
                              f"as its own class with all its fields")
        cls = super().__new__(mcs, name, bases, _record_namespace(name, ns, msg_type, version))
        _register(cast("type[Record]", cls))
        return cls

    def __init__(cls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **_: Any) -> None:
        super().__init__(name, bases, ns)


class Record(tuple[Any, ...], metaclass=_RecordMeta):
    """Base of every message declaration: ``class Name(Record, msg_type=N, version=V)``."""

    __slots__ = ()

    msg_type: ClassVar[int]
    version: ClassVar[int]
    size: ClassVar[int]
    dtype: ClassVar[np.dtype[np.void]]
    struct: ClassVar[Struct]
    fields: ClassVar[tuple[Field, ...]]
    _names: ClassVar[tuple[str, ...]]
    _prefixes: ClassVar[dict[int, _Prefix]]
    _to_wire: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _from_wire: ClassVar[Callable[[tuple[Any, ...]], tuple[Any, ...]]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:  # replaced in every record class
        raise SchemaError("Record is abstract: declare a subclass with msg_type=N")

    def encode(self) -> bytes:  # replaced in every record class
        """The payload: ``size`` bytes in the documented layout."""
        raise NotImplementedError

    @classmethod
    def decode(cls: type[R], buf: Any) -> R:  # replaced in every record class
        """Decode a payload from bytes, bytearray, memoryview or numpy void (see Versioning)."""
        raise SchemaError("Record is abstract: decode with a declared record class")

    @classmethod
    def to_array(cls, records: Iterable[Record]) -> np.ndarray[Any, np.dtype[np.void]]:
        """A numpy structured array of ``cls.dtype`` holding ``records``."""
        rows = []
        for index, record in enumerate(records):
            if type(record) is not cls:
                raise SchemaError(f"{cls.__name__}.to_array: item {index} is "
                                  f"{_describe(record)}, not a {cls.__name__}")
            rows.append(cls._to_wire(record))
        return np.array(rows, dtype=cls.dtype)

    @classmethod
    def from_array(cls: type[R], array: np.ndarray[Any, Any]) -> list[R]:
        """The records in a numpy array of ``cls.dtype`` (any shape, C order)."""
        if not isinstance(array, np.ndarray) or array.dtype != cls.dtype:
            raise SchemaError(f"{cls.__name__}.from_array needs an array of {cls.__name__}.dtype, "
                              f"got {_describe(array)}")
        wires = cls.struct.iter_unpack(array.tobytes())
        try:
            return [tuple.__new__(cls, cls._from_wire(wire)) for wire in wires]
        except UnicodeDecodeError:
            return [tuple.__new__(cls, _from_wire_slow(cls, wire))
                    for wire in cls.struct.iter_unpack(array.tobytes())]

    @classmethod
    def from_record(cls: type[R], record: Any) -> R:
        """The record held in one element of an array of ``cls.dtype`` (a numpy void)."""
        if not isinstance(record, np.void) or record.dtype != cls.dtype:
            raise SchemaError(f"{cls.__name__}.from_record needs an element of "
                              f"{cls.__name__}.dtype, got {_describe(record)}")
        return cls.decode(record)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._names, self))

    def _replace(self: R, **changes: Any) -> R:
        return type(self)(**{**self._asdict(), **changes})

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in zip(self._names, self))
        return f"{type(self).__name__}({values})"

    # Equal only to a record of the same class: a plain tuple's reflected == must not get a say.
    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return tuple.__eq__(self, other)
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if type(other) is type(self):
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    __hash__ = tuple.__hash__

    def __lt__(self, other: object) -> bool:
        return NotImplemented

    __le__ = __gt__ = __ge__ = __lt__

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), tuple(self)))


_RESERVED = frozenset(name for name in Record.__dict__ if not name.startswith("_")) | {
    "msg_type", "version", "size", "dtype", "struct", "fields"}


def _rebuild(cls: type[R], values: tuple[Any, ...]) -> R:
    return cls(**dict(zip(cls._names, values)))


def _check_u16(owner: str, what: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= 0xFFFF:
        raise SchemaError(f"{owner}: {what} must be an int in 1..65535, got {_describe(value)}")
    return value


def _annotations(name: str, ns: dict[str, Any]) -> dict[str, Any]:
    module = sys.modules.get(ns.get("__module__", ""))
    globs = vars(module) if module is not None else {}
    result = {}
    for fname, ann in ns.get("__annotations__", {}).items():
        if isinstance(ann, str):  # from __future__ import annotations
            try:
                ann = eval(ann, globs, dict(ns))  # noqa: S307 - the declaring module's own text
            except Exception as exc:
                raise SchemaError(f"{name}.{fname}: cannot evaluate annotation {ann!r}: {exc}") from exc
        result[fname] = ann
    return result


def _field_kind(name: str, fname: str, ann: object) -> Kind:
    where = f"{name}.{fname}"
    if fname.startswith("_"):
        raise SchemaError(f"{where}: field names may not start with '_'")
    if fname in _RESERVED:
        raise SchemaError(f"{where}: {fname!r} is a Record attribute and cannot be a field name")
    if fname in _C_KEYWORDS:
        raise SchemaError(f"{where}: {fname!r} is a C keyword and cannot be a field name")
    if get_origin(ann) is Annotated:  # Annotated[int, u64]: the same field, and mypy can read it
        python_type, *metadata = get_args(ann)
        kinds = [m for m in metadata if isinstance(m, Kind)]
        if len(kinds) != 1 or python_type is not kinds[0].value_type:
            raise SchemaError(f"{where}: write Annotated[T, kind] with one kind and T its Python type, "
                              f"as in Annotated[int, u64] or Annotated[str, string(8)]; got {ann!r}")
        ann = kinds[0]
    if ann is string or ann is raw:
        factory = "string" if ann is string else "raw"
        raise SchemaError(f"{where}: {factory} needs a size, as in {factory}(8)")
    if not isinstance(ann, Kind):
        raise SchemaError(f"{where}: {ann!r} is not a field kind; use one of i8 i16 i32 i64 u8 u16 "
                          f"u32 u64 f32 f64 boolean string(n) raw(n)")
    return ann


def _compile(name: str, source: str, env: dict[str, Any]) -> Any:
    scope: dict[str, Any] = {}
    exec(source, {**_CODEGEN_GLOBALS, **env}, scope)  # noqa: S102 - generated from checked names
    return scope[name]


def _record_namespace(name: str, ns: dict[str, Any], msg_type: object, version: object) -> dict[str, Any]:
    """Check a record declaration and return the class namespace with its generated members."""
    if msg_type is None:
        raise SchemaError(f"{name}: declare a message type, as in class {name}(Record, msg_type=N, version=1)")
    _check_u16(name, "msg_type", msg_type)
    _check_u16(name, "version", version)
    for member in ("__slots__", "__new__", "__init__"):
        if member in ns:
            raise SchemaError(f"{name}: a record may not define {member}")
    ns = dict(ns)
    fields: list[Field] = []
    offset = 0
    for fname, ann in _annotations(name, ns).items():
        kind = _field_kind(name, fname, ann)
        default = ns.pop(fname, MISSING)
        if default is not MISSING:
            default = kind.check(default, f"{name}.{fname} (default)")
        fields.append(Field(fname, kind, kind.size, offset, default))
        offset += kind.size
    if not fields:
        raise SchemaError(f"{name}: a record needs at least one field")

    names = tuple(f.name for f in fields)
    codec = Struct("<" + "".join(f.kind.code for f in fields))
    dtype = np.dtype([(f.name, f.kind.numpy) for f in fields])
    assert codec.size == dtype.itemsize == offset
    env: dict[str, Any] = {f"_k{i}": f.kind for i, f in enumerate(fields)}
    env.update({f"_d{i}": f.default for i, f in enumerate(fields)})
    env.update(_pack=codec.pack, _unpack_from=codec.unpack_from, _nbytes=_nbytes, _size=offset,
               _bad_call=_bad_call, _decode_short=_decode_short, _encode_error=_encode_error,
               _decode_error=_decode_error, _StructError=StructError)
    has_text = any(isinstance(f.kind, _StringKind) for f in fields)
    plain = ", ".join(names)
    to_wire = ", ".join(f.kind.to_wire(f.name) for f in fields)
    from_wire = ", ".join(f.kind.from_wire(f"_v[{i}]") for i, f in enumerate(fields))

    new_src = [f"def __new__(_cls, *_args, {', '.join(f'{n}=_d{i}' for i, n in enumerate(names))}, **_unknown):",
               "    if _args or _unknown: _bad_call(_cls, _args, _unknown)"]
    new_src += [f"    if not ({f.kind.guard(f.name)}): {f.name} = _k{i}.check({f.name}, {name + '.' + f.name!r})"
                for i, f in enumerate(fields)]
    new_src.append(f"    return _tnew(_cls, ({plain},))")
    encode_src = (f"def encode(_self):\n"
                  f"    try:\n"
                  f"        {plain}, = _self\n"  # faster than _pack(*_self) on a tuple subclass
                  f"        return _pack({to_wire})\n"
                  f"    except (_StructError, OverflowError, TypeError, AttributeError, UnicodeError) as _e:\n"
                  f"        raise _encode_error(_self, _e) from None\n")
    decode_src = ("def decode(_cls, _buf):\n"
                  "    _t = _type(_buf)\n"
                  "    _n = _len(_buf) if _t is _bytes else _buf.nbytes if _t is _memoryview else _nbytes(_buf)\n"
                  "    if _n < _size: return _decode_short(_cls, _buf, _n)\n"
                  "    try:\n"
                  + (f"        _v = _unpack_from(_buf)\n"
                     f"        return _tnew(_cls, ({from_wire},))\n" if has_text else
                     "        return _tnew(_cls, _unpack_from(_buf))\n") +
                  "    except (_StructError, TypeError, BufferError, UnicodeDecodeError) as _e:\n"
                  "        raise _decode_error(_cls, _buf, _e) from None\n")

    ns.update(
        __slots__=(), __match_args__=names, _names=names,
        msg_type=msg_type, version=version, size=offset, dtype=dtype, struct=codec, fields=tuple(fields),
        _prefixes={f.offset: _Prefix(fields, i) for i, f in enumerate(fields)},
        __new__=_compile("__new__", "\n".join(new_src), env),
        encode=_compile("encode", encode_src, env),
        decode=classmethod(_compile("decode", decode_src, env)),
        _to_wire=staticmethod(_compile("_to_wire", f"def _to_wire(_self):\n    {plain}, = _self\n"
                                                   f"    return ({to_wire},)\n", env)),
        _from_wire=staticmethod(_compile("_from_wire", f"def _from_wire(_v):\n    return ({from_wire},)\n", env)),
    )
    ns["__signature__"] = inspect.Signature([
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                          default=f.default if f.has_default else inspect.Parameter.empty)
        for f in fields])
    for i, f in enumerate(fields):
        ns[f.name] = _getter(i, f"{f.kind.name} at offset {f.offset}")
    ns["encode"].__doc__ = Record.encode.__doc__
    ns["decode"].__func__.__doc__ = Record.decode.__doc__
    return ns


# namedtuple's C field accessor where the interpreter has it; a property does the same, slower.
_getter: Callable[[int, str], Any] = getattr(
    collections, "_tuplegetter", lambda index, doc: property(operator.itemgetter(index), doc=doc))


def _bad_call(cls: type[Record], args: tuple[Any, ...], unknown: dict[str, Any]) -> None:
    if args:
        raise SchemaError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
    raise SchemaError(f"{cls.__name__} has no field {', '.join(map(repr, sorted(unknown)))}; "
                      f"its fields are {', '.join(cls._names)}")


def _nbytes(buf: Any) -> int:
    try:
        return memoryview(buf).nbytes
    except TypeError:
        raise SchemaError(f"cannot decode {_describe(buf)}: expected bytes, bytearray, memoryview "
                          f"or numpy void") from None


def _from_wire_slow(cls: type[Record], wire: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(f.kind.from_wire_value(value, f"{cls.__name__}.{f.name}")
                 for f, value in zip(cls.fields, wire))


class _Prefix:
    """How to read a payload holding only the first ``count`` fields (from an older version)."""

    def __init__(self, fields: list[Field], count: int) -> None:
        self.codec = Struct("<" + "".join(f.kind.code for f in fields[:count]))
        self.has_text = any(isinstance(f.kind, _StringKind) for f in fields[:count])
        self.lacking = next((f.name for f in fields[count:] if not f.has_default), None)
        self.defaults = tuple(f.default for f in fields[count:])


def _decode_short(cls: type[R], buf: Any, n: int) -> R:
    prefix = cls._prefixes.get(n)
    if prefix is None:
        bounds = ", ".join(str(f.offset) for f in cls.fields)
        raise SchemaError(
            f"{cls.__name__} (msg_type {cls.msg_type} version {cls.version}): a payload of {n} bytes "
            f"does not fit: expected {cls.size} bytes, or more (a newer version), or a prefix ending "
            f"at a field boundary ({bounds}) from an older version")
    if prefix.lacking is not None:
        raise SchemaError(f"{cls.__name__}: a payload of {n} bytes (an older version) lacks field "
                          f"{prefix.lacking!r}, which has no default")
    try:
        known = prefix.codec.unpack_from(buf)
    except (StructError, TypeError, BufferError) as exc:
        raise SchemaError(f"{cls.__name__}: cannot decode {_describe(buf)}: {exc}") from None
    if prefix.has_text:
        known = _from_wire_slow(cls, known)
    return tuple.__new__(cls, known + prefix.defaults)


def _decode_error(cls: type[Record], buf: Any, exc: Exception) -> SchemaError:
    if isinstance(exc, UnicodeDecodeError):
        try:
            _from_wire_slow(cls, cls.struct.unpack_from(buf))
        except SchemaError as error:
            return error
    return SchemaError(f"{cls.__name__}: cannot decode {_describe(buf)}: {exc}")


def _encode_error(record: Record, exc: Exception) -> SchemaError:
    cls = type(record)
    for f, value in zip(cls.fields, record):  # a record built around the checks, e.g. by tuple.__new__
        try:
            f.kind.check(value, f"{cls.__name__}.{f.name}")
        except SchemaError as error:
            return error
    return SchemaError(f"{cls.__name__}: cannot encode: {exc}")


# ------------------------------------------------------------------------------------ registry

_registry: dict[int, dict[int, type[Record]]] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _register(cls: type[Record]) -> None:
    versions = _registry.setdefault(cls.msg_type, {})
    old = versions.get(cls.version)
    if old is not None and _qualified(old) != _qualified(cls):
        raise SchemaError(f"{_qualified(cls)}: msg_type {cls.msg_type} version {cls.version} is "
                          f"already declared by {_qualified(old)}")
    versions[cls.version] = cls


def lookup(msg_type: int, version: int | None = None) -> type[Record]:
    """The record class for ``msg_type``: its newest version, or the given ``version``."""
    versions = _registry.get(msg_type)
    if not versions:
        raise SchemaError(f"no record is declared for msg_type {msg_type!r}")
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        raise SchemaError(f"msg_type {msg_type} has no version {version!r}; "
                          f"declared versions are {sorted(versions)}")
    return versions[version]


def registered() -> dict[int, type[Record]]:
    """Every declared msg_type, mapped to its newest version's class."""
    return {msg_type: versions[max(versions)] for msg_type, versions in _registry.items()}


@contextlib.contextmanager
def separate_registry() -> Iterator[None]:
    """Declare records in a registry of their own, so that two versions of one schema can be loaded
    side by side (what ``pyseq schema check`` does): inside the ``with`` block, declarations go to a
    fresh, empty registry (:func:`lookup` sees only them) and are checked against it alone.  On
    leaving it the process's registry is back as it was; if the block ends normally, the records of
    modules still imported under their own names (a shared module the code inside imported for
    the first time) join it, as if imported outside."""
    global _registry
    saved, _registry = _registry, {}
    try:
        yield
    except BaseException:
        _registry = saved
        raise
    inside, _registry = _registry, saved
    for versions in inside.values():
        for cls in versions.values():
            found: Any = sys.modules.get(cls.__module__)
            for part in cls.__qualname__.split("."):
                found = getattr(found, part, None)
            if found is cls:
                _register(cls)


def check_compatible(old: type[Record], new: type[Record]) -> None:
    """Raise :class:`SchemaCompatibilityError` unless ``new`` is a compatible successor of ``old``:
    the same msg_type, a higher version, old's fields first and unchanged (name and kind), and
    defaults on every appended field (so that ``new`` can read ``old``'s payloads)."""
    problems = []
    if new.msg_type != old.msg_type:
        problems.append(f"msg_type changed from {old.msg_type} to {new.msg_type}")
    if new.version <= old.version:
        problems.append(f"version {new.version} does not follow {old.version}")
    for index, before in enumerate(old.fields):
        after = new.fields[index] if index < len(new.fields) else None
        if after is None:
            problems.append(f"field {before.name!r} was removed")
        elif (after.name, after.kind) != (before.name, before.kind):
            problems.append(f"field {index} changed from {before.name}: {before.kind!r} "
                            f"to {after.name}: {after.kind!r}")
    problems += [f"appended field {f.name!r} has no default" for f in new.fields[len(old.fields):]
                 if not f.has_default]
    if problems:
        raise SchemaCompatibilityError(f"{_qualified(new)} is not a compatible successor of "
                                       f"{_qualified(old)}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------ C header

def _c_name(cls: type) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls.__name__).lower()


def c_header(*classes: type[Record], guard: str = "PYSEQ_MESSAGES_H") -> str:
    """A C11 header declaring each record as a packed struct, with its type, version and size as
    ``PYSEQ_MSG_<NAME>_TYPE``/``_VERSION``/``_SIZE`` and static asserts on its size and offsets."""
    seen: dict[str, type] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Record)) or cls is Record:
            raise SchemaError(f"c_header takes record classes, got {_describe(cls)}")
        if seen.setdefault(_c_name(cls), cls) is not cls:
            raise SchemaError(f"c_header: {_qualified(cls)} and {_qualified(seen[_c_name(cls)])} "
                              f"would share the C name {_c_name(cls)}")
    out = [
        "/* Generated by pyseq.schema.c_header(); do not edit.",
        " *",
        " * Layout: little-endian, packed in declaration order, no implicit padding (each field's",
        " * offset is the sum of the sizes before it).  booleans are one byte, 0 or 1.  char[n] holds",
        " * UTF-8, NUL-padded, with no terminator when full.  uint8_t[n] arrays are raw bytes.",
        " * New versions only append fields: read a longer payload by its prefix; fill the defaults",
        " * given below for the fields an older (shorter) payload lacks.",
        " */",
        f"#ifndef {guard}", f"#define {guard}", "",
        "#include <stddef.h>", "#include <stdint.h>", "",
        "#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__",
        '#error "pyseq messages are little-endian; these structs map them only on a little-endian host"',
        "#endif",
        '_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "pyseq needs binary32/binary64");',
    ]
    for cls in classes:
        c_name = _c_name(cls)
        macro, struct_t = f"PYSEQ_MSG_{c_name.upper()}", f"pyseq_msg_{c_name}_t"
        width = max(len(f"{f.kind.c_type} {f.name}{f.kind.c_dims};") for f in cls.fields)
        out += ["", f"/* {cls.__name__}: msg_type {cls.msg_type}, version {cls.version}, "
                    f"{cls.size} bytes */",
                f"#define {macro}_TYPE {cls.msg_type}",
                f"#define {macro}_VERSION {cls.version}",
                f"#define {macro}_SIZE {cls.size}",
                f"typedef struct __attribute__((packed)) pyseq_msg_{c_name} {{"]
        for f in cls.fields:
            note = f"{f.kind.name}" + (f", default {f.default!r}" if f.has_default else "")
            decl = f"{f.kind.c_type} {f.name}{f.kind.c_dims};"
            note = note.replace("*/", "* /").replace("/*", "/ *")  # a default must not end the comment
            out.append(f"    {decl:<{width}}  /* offset {f.offset}: {note} */")
        out += [f"}} {struct_t};",
                f'_Static_assert(sizeof({struct_t}) == {cls.size}, "{cls.__name__} size");']
        out += [f'_Static_assert(offsetof({struct_t}, {f.name}) == {f.offset}, '
                f'"{cls.__name__}.{f.name} offset");' for f in cls.fields]
    out += ["", f"#endif /* {guard} */", ""]
    return "\n".join(out)
