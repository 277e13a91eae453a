"""Message declarations: layout, codec, numpy agreement, versioning, registry, C header.

Every record class here uses a msg_type in 60000..65535 and a name of its own, so no test depends on
another's registrations.  Classes declared inside a test are re-declared under the same qualified
name when hypothesis runs the test again, which the registry allows.
"""
from __future__ import annotations

import copy
import pickle
import re
import shutil
import struct
import subprocess
import sys
import types
from typing import Annotated, Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyseq import schema
from pyseq.errors import SchemaCompatibilityError, SchemaError
from pyseq.schema import (
    MISSING, Field, Kind, Record, boolean, c_header, check_compatible, f32, f64, i8, i16, i32, i64,
    lookup, raw, registered, string, u8, u16, u32, u64,
)

INT_KINDS: list[Kind] = [i8, i16, i32, i64, u8, u16, u32, u64]


def declare(name: str, msg_type: int, fields: dict[str, Any], version: Any = 1,
            module: str = __name__) -> type[Record]:
    """Declare a record class from a dict of annotations, as a class statement would."""
    cls = types.new_class(name, (Record,), {"msg_type": msg_type, "version": version},
                          lambda ns: ns.update(__module__=module, __annotations__=fields))
    return cast("type[Record]", cls)


class AllKinds(Record, msg_type=60001, version=1):
    a_i8: i8
    a_i16: i16
    a_i32: i32
    a_i64: i64
    a_u8: u8
    a_u16: u16
    a_u32: u32
    a_u64: u64
    a_f32: f32
    a_f64: f64
    flag: boolean
    text: string(8)
    blob: raw(4)


class Quote(Record, msg_type=60002, version=1):
    order_id: u64
    price: f64
    qty: i32 = 0
    symbol: string(8)
    blob: raw(4) = b""


def quote(**changes: Any) -> Quote:
    return Quote(**{"order_id": 1, "price": 10.5, "symbol": "AAPL", **changes})


def values_for(kind: Kind) -> st.SearchStrategy[Any]:
    """Every valid value of a kind, worked out from its name rather than from the module."""
    if m := re.fullmatch(r"([iu])(8|16|32|64)", kind.name):
        bits = int(m[2])
        return (st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if m[1] == "i"
                else st.integers(0, (1 << bits) - 1))
    if kind.name in ("f32", "f64"):
        return st.floats(width=32 if kind.name == "f32" else 64, allow_nan=False)
    if kind.name == "boolean":
        return st.booleans()
    if m := re.fullmatch(r"string\((\d+)\)", kind.name):
        size = int(m[1])
        text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                       max_size=size)
        return text.filter(lambda s: len(s.encode()) <= size)
    if m := re.fullmatch(r"raw\((\d+)\)", kind.name):
        return st.binary(max_size=int(m[1]))
    raise AssertionError(kind)


def records_of(cls: type[Record]) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: values_for(f.kind) for f in cls.fields})


def wire_value(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


# ----------------------------------------------------------------------------------- layout

def test_fields_are_packed_in_declaration_order_with_no_padding() -> None:
    assert [(f.name, f.offset, f.size) for f in Quote.fields] == [
        ("order_id", 0, 8), ("price", 8, 8), ("qty", 16, 4), ("symbol", 20, 8), ("blob", 28, 4)]
    assert Quote.size == 32


def test_each_kind_has_its_documented_size() -> None:
    sizes = {k.name: k.size for k in (*INT_KINDS, f32, f64, boolean, string(5), raw(3))}
    assert sizes == {"i8": 1, "i16": 2, "i32": 4, "i64": 8, "u8": 1, "u16": 2, "u32": 4, "u64": 8,
                     "f32": 4, "f64": 8, "boolean": 1, "string(5)": 5, "raw(3)": 3}


def test_the_numpy_dtype_has_the_fields_offsets_and_size_of_the_struct() -> None:
    assert AllKinds.dtype.names == tuple(f.name for f in AllKinds.fields)
    assert AllKinds.dtype.fields is not None
    assert [AllKinds.dtype.fields[f.name][1] for f in AllKinds.fields] == [f.offset for f in AllKinds.fields]
    expected = 1 + 2 + 4 + 8 + 1 + 2 + 4 + 8 + 4 + 8 + 1 + 8 + 4
    assert AllKinds.dtype.itemsize == AllKinds.struct.size == AllKinds.size == expected


def test_the_numpy_dtype_is_little_endian_whatever_the_host() -> None:
    assert all(entry[1][0] in "<|" for entry in AllKinds.dtype.descr)
    assert AllKinds.dtype.newbyteorder("<") == AllKinds.dtype


def test_encode_writes_integers_little_endian() -> None:
    class Word(Record, msg_type=60010, version=1):
        value: u32
    assert Word(value=0x01020304).encode() == b"\x04\x03\x02\x01"


def test_fields_declared_under_future_annotations_are_evaluated() -> None:
    module = types.ModuleType("pyseq_test_future_annotations")
    sys.modules[module.__name__] = module
    try:
        exec("from __future__ import annotations\n"
             "from pyseq.schema import Record, u16, string\n"
             "class Later(Record, msg_type=60011, version=1):\n"
             "    code: u16\n"
             "    name: string(4) = 'x'\n", module.__dict__)
        assert [(f.name, f.kind) for f in module.Later.fields] == [("code", u16), ("name", string(4))]
    finally:
        del sys.modules[module.__name__]


def test_a_field_may_be_written_as_annotated_python_type_and_kind() -> None:
    class Typed(Record, msg_type=60025, version=1):
        order_id: Annotated[int, u64]
        symbol: Annotated[str, string(8)] = ""
    assert [(f.name, f.kind) for f in Typed.fields] == [("order_id", u64), ("symbol", string(8))]


def test_an_annotated_field_whose_python_type_does_not_match_its_kind_is_rejected() -> None:
    with pytest.raises(SchemaError, match=r"Mistyped\.value: write Annotated\[T, kind\]"):
        declare("Mistyped", 60026, {"value": Annotated[str, u64]})


# ---------------------------------------------------------------------------------- codec

@settings(deadline=None)
@given(records_of(AllKinds))
def test_a_record_of_every_field_kind_round_trips_through_encode_and_decode(record: AllKinds) -> None:
    encoded = record.encode()
    assert len(encoded) == AllKinds.size
    assert AllKinds.decode(encoded) == record


@settings(deadline=None)
@given(st.lists(records_of(AllKinds), max_size=5))
def test_struct_and_numpy_agree_byte_for_byte(records: list[AllKinds]) -> None:
    assert AllKinds.to_array(records).tobytes() == b"".join(r.encode() for r in records)


@settings(deadline=None)
@given(st.lists(records_of(AllKinds), max_size=5))
def test_records_round_trip_through_a_numpy_array(records: list[AllKinds]) -> None:
    assert AllKinds.from_array(AllKinds.to_array(records)) == records


_KIND_CHOICES = st.one_of(
    st.sampled_from([*INT_KINDS, f32, f64, boolean]),
    st.integers(1, 12).map(string),
    st.integers(1, 12).map(raw),
)


@settings(deadline=None)
@given(st.lists(_KIND_CHOICES, min_size=1, max_size=8), st.data())
def test_any_declaration_lays_out_the_same_in_struct_and_a_numpy_array_filled_field_by_field(
        kinds: list[Kind], data: st.DataObject) -> None:
    cls = declare("Generated", 60900, {f"f{i}": k for i, k in enumerate(kinds)})
    assert [f.offset for f in cls.fields] == [sum(k.size for k in kinds[:i]) for i in range(len(kinds))]
    values = {f.name: data.draw(values_for(f.kind)) for f in cls.fields}
    record = cls(**values)
    array = np.zeros(1, cls.dtype)
    for name, value in zip(cls._names, record):
        array[name][0] = wire_value(value)
    assert array.tobytes() == record.encode()


def test_decode_accepts_bytes_bytearray_memoryview_and_numpy_void() -> None:
    record = quote(qty=7, blob=b"xy")
    payload = record.encode()
    element = Quote.to_array([record])[0]
    for buffer in (payload, bytearray(payload), memoryview(payload), element):
        assert Quote.decode(buffer) == record


def test_from_record_reads_one_element_of_an_array() -> None:
    records = [quote(order_id=1), quote(order_id=2)]
    assert Quote.from_record(Quote.to_array(records)[1]) == records[1]


def test_a_string_field_decodes_without_its_nul_padding() -> None:
    payload = quote(symbol="AB").encode()
    assert payload[20:28] == b"AB\x00\x00\x00\x00\x00\x00"
    assert Quote.decode(payload).symbol == "AB"


def test_a_string_field_holds_exactly_its_size_in_utf8_with_no_terminator() -> None:
    assert Quote.decode(quote(symbol="ABCDEFGH").encode()).symbol == "ABCDEFGH"
    assert Quote.decode(quote(symbol="€€").encode()).symbol == "€€"  # 6 bytes


def test_a_raw_field_keeps_its_padding() -> None:
    record = quote(blob=b"ab")
    assert record.blob == b"ab\x00\x00"
    assert Quote.decode(record.encode()).blob == b"ab\x00\x00"


def test_an_f32_value_is_rounded_to_binary32_when_built() -> None:
    class Ratio(Record, msg_type=60012, version=1):
        value: f32
    record = Ratio(value=0.1)
    assert record.value == float(np.float32(0.1))
    assert Ratio.decode(record.encode()) == record


def test_numpy_scalars_are_accepted_as_plain_python_values() -> None:
    record = quote(order_id=np.uint64(5), price=np.float32(1.5), qty=np.int8(-3))
    assert (record.order_id, record.price, record.qty) == (5, 1.5, -3)
    assert type(record.order_id) is int and type(record.price) is float


# ------------------------------------------------------------------------------- defaults

def test_fields_left_out_take_their_defaults() -> None:
    record = Quote(order_id=1, price=2.0, symbol="X")
    assert (record.qty, record.blob) == (0, b"\x00\x00\x00\x00")


def test_fields_report_their_defaults() -> None:
    assert [f.default for f in Quote.fields] == [MISSING, MISSING, 0, MISSING, b"\x00" * 4]
    assert [f.has_default for f in Quote.fields] == [False, False, True, False, True]
    assert Quote.fields[2] == Field("qty", i32, 4, 16, 0)


def test_a_field_left_out_without_a_default_is_a_schema_error_naming_it() -> None:
    with pytest.raises(SchemaError, match=r"Quote\.symbol is missing and has no default"):
        Quote(order_id=1, price=2.0)


def test_an_unknown_keyword_is_a_schema_error_naming_it() -> None:
    with pytest.raises(SchemaError, match=r"Quote has no field 'side'"):
        quote(side=1)


def test_positional_arguments_are_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="keyword arguments only"):
        Quote(1, 2.0, 0, "X")  # type: ignore[call-arg]


def test_an_invalid_default_is_a_schema_error_at_declaration() -> None:
    with pytest.raises(SchemaError, match=r"Small\.value \(default\): 300 is out of range for u8"):
        class Small(Record, msg_type=60013, version=1):
            value: u8 = 300


# ------------------------------------------------------------------------------ bad values

@pytest.mark.parametrize("kind", INT_KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("edge", ["below", "above"])
def test_an_out_of_range_integer_is_a_schema_error_naming_the_field(kind: Kind, edge: str) -> None:
    cls = declare(f"Range_{kind.name}", 60100 + INT_KINDS.index(kind), {"value": kind})
    bits = kind.size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind.name[0] == "i" else (0, (1 << bits) - 1)
    for edge_value in (lo, hi):
        assert cls.decode(cls(value=edge_value).encode())._asdict() == {"value": edge_value}
    with pytest.raises(SchemaError, match=rf"\.value: -?\d+ is out of range for {kind.name}"):
        cls(value=lo - 1 if edge == "below" else hi + 1)


@pytest.mark.parametrize(("field", "value"), [
    ("a_i32", 1.5), ("a_i32", "1"), ("a_i32", True), ("a_i32", None), ("a_u64", np.float64(1)),
    ("a_f64", "1.5"), ("a_f64", True), ("a_f32", None),
    ("flag", 1), ("flag", "yes"),
    ("text", b"bytes"), ("text", 5),
    ("blob", "text"), ("blob", 5),
])
def test_a_value_of_the_wrong_type_is_a_schema_error_naming_the_field(field: str, value: Any) -> None:
    good = dict(a_i8=0, a_i16=0, a_i32=0, a_i64=0, a_u8=0, a_u16=0, a_u32=0, a_u64=0, a_f32=0.0,
                a_f64=0.0, flag=False, text="", blob=b"")
    with pytest.raises(SchemaError, match=rf"AllKinds\.{field}: expected"):
        AllKinds(**{**good, field: value})


def test_a_string_longer_than_its_size_in_utf8_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"Quote\.symbol: 'ééééé' is 10 bytes in UTF-8, longer than string\(8\)"):
        quote(symbol="ééééé")


def test_a_string_holding_nul_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"Quote\.symbol: .* contains NUL"):
        quote(symbol="A\x00B")


def test_a_string_that_is_not_encodable_as_utf8_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"Quote\.symbol: .* cannot be encoded as UTF-8"):
        quote(symbol="\ud800")


def test_raw_bytes_longer_than_the_field_are_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"Quote\.blob: 5 bytes is longer than raw\(4\)"):
        quote(blob=b"12345")


def test_an_f32_value_too_large_for_binary32_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"AllKinds\.a_f32: .* out of range for f32"):
        AllKinds(a_i8=0, a_i16=0, a_i32=0, a_i64=0, a_u8=0, a_u16=0, a_u32=0, a_u64=0, a_f32=1e39,
                 a_f64=0.0, flag=False, text="", blob=b"")


def test_encoding_a_record_built_around_the_checks_raises_schema_error_not_struct_error() -> None:
    forged = tuple.__new__(Quote, (1, 2.0, 1 << 40, "X", b"\x00" * 4))
    with pytest.raises(SchemaError, match=r"Quote\.qty: 1099511627776 is out of range for i32"):
        forged.encode()


# ---------------------------------------------------------------------- instances as values

def test_a_record_is_immutable() -> None:
    record = quote()
    with pytest.raises(AttributeError):
        record.qty = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        record.extra = 5  # type: ignore[attr-defined]


def test_equal_records_are_equal_and_hash_alike() -> None:
    assert quote(qty=3) == quote(qty=3) and hash(quote(qty=3)) == hash(quote(qty=3))
    assert quote(qty=3) != quote(qty=4)
    assert len({quote(qty=3), quote(qty=3), quote(qty=4)}) == 2


def test_records_of_different_classes_or_plain_tuples_are_never_equal() -> None:
    class Twin(Record, msg_type=60014, version=1):
        order_id: u64
        price: f64
        qty: i32 = 0
        symbol: string(8)
        blob: raw(4) = b""
    record = quote()
    assert record != Twin(**record._asdict())
    assert record != tuple(record) and tuple(record) != record
    assert not record == tuple(record) and not tuple(record) == record


def test_records_are_not_ordered() -> None:
    with pytest.raises(TypeError):
        quote(qty=1) < quote(qty=2)  # noqa: B015


def test_repr_shows_the_class_and_every_field() -> None:
    assert repr(quote()) == "Quote(order_id=1, price=10.5, qty=0, symbol='AAPL', blob=b'\\x00\\x00\\x00\\x00')"


def test_a_record_survives_pickle_and_copy() -> None:
    record = quote(qty=9)
    assert pickle.loads(pickle.dumps(record)) == record
    assert copy.deepcopy(record) == record


def test_replace_builds_a_checked_copy() -> None:
    assert quote()._replace(qty=4) == quote(qty=4)
    with pytest.raises(SchemaError, match=r"Quote\.qty"):
        quote()._replace(qty="4")


def test_fields_named_like_tuple_methods_are_plain_fields() -> None:
    class Tally(Record, msg_type=60015, version=1):
        count: u32
        index: u16
    assert Tally.decode(Tally(count=3, index=4).encode()) == Tally(count=3, index=4)
    assert (Tally(count=3, index=4).count, Tally(count=3, index=4).index) == (3, 4)


# ----------------------------------------------------------------------------- versioning

class TradeV1(Record, msg_type=60003, version=1):
    trade_id: u64
    price: f64


class TradeV2(Record, msg_type=60003, version=2):
    trade_id: u64
    price: f64
    venue: string(4) = "XNAS"
    qty: u32 = 100


def test_a_reader_of_version_one_reads_a_version_two_payload_by_its_prefix() -> None:
    payload = TradeV2(trade_id=7, price=1.25, venue="BATS", qty=5).encode()
    assert TradeV1.decode(payload) == TradeV1(trade_id=7, price=1.25)


@settings(deadline=None)
@given(records_of(Quote), st.binary(min_size=1, max_size=64))
def test_a_reader_ignores_whatever_a_newer_version_appended(record: Quote, tail: bytes) -> None:
    assert Quote.decode(record.encode() + tail) == record


def test_a_reader_of_version_two_fills_defaults_when_reading_a_version_one_payload() -> None:
    payload = TradeV1(trade_id=7, price=1.25).encode()
    assert TradeV2.decode(payload) == TradeV2(trade_id=7, price=1.25, venue="XNAS", qty=100)


def test_a_payload_ending_at_any_field_boundary_decodes_when_the_rest_have_defaults() -> None:
    full = TradeV2(trade_id=7, price=1.25, venue="BATS", qty=5)
    payload = full.encode()
    assert TradeV2.decode(payload[:20]) == full._replace(qty=100)
    assert TradeV2.decode(payload[:16]) == full._replace(venue="XNAS", qty=100)


def test_an_older_payload_lacking_a_field_without_default_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"payload of 8 bytes .* lacks field 'price', which has no default"):
        TradeV2.decode(TradeV1(trade_id=7, price=1.25).encode()[:8])


def test_a_payload_not_ending_at_a_field_boundary_is_a_schema_error_naming_both_lengths() -> None:
    with pytest.raises(SchemaError, match=r"payload of 18 bytes does not fit: expected 24 bytes"):
        TradeV2.decode(bytes(18))


def test_invalid_utf8_in_a_payload_is_a_schema_error_naming_the_field() -> None:
    payload = bytearray(quote().encode())
    payload[20:22] = b"\xff\xfe"
    with pytest.raises(SchemaError, match=r"Quote\.symbol: payload bytes .* are not valid UTF-8"):
        Quote.decode(bytes(payload))


def test_decoding_something_that_is_not_a_buffer_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="cannot decode str"):
        Quote.decode("not bytes")


def test_from_array_rejects_an_array_of_another_dtype() -> None:
    with pytest.raises(SchemaError, match=r"from_array needs an array of Quote\.dtype"):
        Quote.from_array(TradeV1.to_array([TradeV1(trade_id=1, price=1.0)]))


def test_from_record_rejects_an_element_of_another_dtype() -> None:
    with pytest.raises(SchemaError, match=r"from_record needs an element of Quote\.dtype"):
        Quote.from_record(TradeV1.to_array([TradeV1(trade_id=1, price=1.0)])[0])


def test_to_array_rejects_records_of_another_class() -> None:
    with pytest.raises(SchemaError, match=r"item 1 is TradeV1"):
        Quote.to_array([quote(), TradeV1(trade_id=1, price=1.0)])


def test_a_version_that_only_appends_defaulted_fields_is_a_compatible_successor() -> None:
    check_compatible(TradeV1, TradeV2)


class LegV1(Record, msg_type=60004, version=1):
    leg_id: u64
    price: f64


@pytest.mark.parametrize(("body", "problem"), [
    ({"leg_id": u64}, "field 'price' was removed"),
    ({"price": f64, "leg_id": u64}, "field 0 changed from leg_id: u64 to price: f64"),
    ({"leg_id": u64, "price": f32}, "field 1 changed from price: f64 to price: f32"),
    ({"leg_id": u64, "price": f64, "qty": u32}, "appended field 'qty' has no default"),
])
def test_a_version_that_removes_reorders_retypes_or_appends_without_default_is_incompatible(
        body: dict[str, Kind], problem: str) -> None:
    successor = declare("LegNext", 60004, body, version=2)
    with pytest.raises(SchemaCompatibilityError, match=re.escape(problem)):
        check_compatible(LegV1, successor)


def test_a_successor_needs_the_same_msg_type_and_a_higher_version() -> None:
    with pytest.raises(SchemaCompatibilityError, match="msg_type changed from 60003 to 60002.*does not follow"):
        check_compatible(TradeV2, Quote)


# -------------------------------------------------------------------- declaration errors

def test_a_record_without_a_msg_type_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="declare a message type"):
        class Untyped(Record):
            value: u8


@pytest.mark.parametrize(("what", "bad"), [
    *[("msg_type", bad) for bad in (0, 65536, -1, "7", True)],
    *[("version", bad) for bad in (0, 65536, -1, "7", True, None)],
])
def test_msg_type_and_version_must_be_ints_in_1_to_65535(what: str, bad: Any) -> None:
    with pytest.raises(SchemaError, match=rf"{what} must be an int in 1\.\.65535"):
        declare("OutOfRange", **{"msg_type": 60016, "version": 1, what: bad}, fields={"value": u8})


@pytest.mark.parametrize(("name", "reason"), [
    ("_hidden", "may not start with '_'"),
    *[(n, "is a Record attribute") for n in ("encode", "decode", "to_array", "from_array", "from_record",
                                             "msg_type", "version", "size", "dtype", "fields", "struct")],
    *[(n, "is a C keyword") for n in ("int", "default", "char", "register", "bool")],
])
def test_a_field_name_that_would_clash_is_rejected(name: str, reason: str) -> None:
    with pytest.raises(SchemaError, match=rf"Clash\.{name}: .*{re.escape(reason)}"):
        declare("Clash", 60017, {name: u8})


@pytest.mark.parametrize(("annotation", "reason"), [
    (int, "is not a field kind"), ("no_such_kind", "cannot evaluate annotation"), (string, r"string needs a size"),
    (raw, r"raw needs a size"),
])
def test_an_annotation_that_is_not_a_field_kind_is_rejected(annotation: Any, reason: str) -> None:
    with pytest.raises(SchemaError, match=rf"Loose\.value: .*{reason}"):
        declare("Loose", 60018, {"value": annotation})


@pytest.mark.parametrize("size", [0, -1, "8", 2.0, True])
@pytest.mark.parametrize("factory", [string, raw])
def test_string_and_raw_need_a_positive_int_size(factory: Any, size: Any) -> None:
    with pytest.raises(SchemaError, match=rf"{factory.__name__}\(size\) needs a positive int size"):
        factory(size)


def test_a_record_class_cannot_be_subclassed() -> None:
    with pytest.raises(SchemaError, match="derives from Record alone"):
        class QuoteV2(Quote, msg_type=60002, version=2):
            venue: u8 = 0


def test_an_unknown_class_keyword_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="unknown class keyword 'msgtype'"):
        class Typo(Record, msgtype=60027):  # type: ignore[call-arg]
            value: u8


def test_a_record_needs_at_least_one_field() -> None:
    with pytest.raises(SchemaError, match="at least one field"):
        class Empty(Record, msg_type=60019, version=1):
            pass


def test_record_itself_cannot_be_built() -> None:
    with pytest.raises(SchemaError, match="Record is abstract"):
        Record()


# ------------------------------------------------------------------------------- registry

def test_declaring_a_record_registers_it_by_msg_type() -> None:
    class Registered(Record, msg_type=60020, version=1):
        value: u8
    assert lookup(60020) is Registered
    assert registered()[60020] is Registered


def test_a_second_class_with_the_same_msg_type_and_version_is_rejected() -> None:
    class First(Record, msg_type=60021, version=1):
        value: u8
    with pytest.raises(SchemaError, match=r"msg_type 60021 version 1 is already declared by .*First"):
        class Second(Record, msg_type=60021, version=1):
            value: u8
    assert lookup(60021) is First


def test_redeclaring_the_same_qualified_name_replaces_the_registration() -> None:
    def declare() -> type[Record]:
        class Reloaded(Record, msg_type=60022, version=1):
            value: u8
        return Reloaded
    first, second = declare(), declare()
    assert first is not second and lookup(60022) is second


def test_lookup_gives_the_newest_version_unless_a_version_is_asked_for() -> None:
    assert lookup(60003) is TradeV2
    assert lookup(60003, 1) is TradeV1


def test_lookup_of_an_unknown_msg_type_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="no record is declared for msg_type 65535"):
        lookup(65535)


def test_lookup_of_an_unknown_version_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"msg_type 60003 has no version 3; declared versions are \[1, 2\]"):
        lookup(60003, 3)


def test_registered_maps_each_msg_type_to_its_newest_class() -> None:
    table = registered()
    assert table[60003] is TradeV2 and table[60001] is AllKinds


def test_registered_returns_a_copy() -> None:
    registered().clear()
    assert lookup(60001) is AllKinds


# ------------------------------------------------------------------------------- C header

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
GCC = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror"]


def test_the_c_header_defines_type_version_and_size_for_each_record() -> None:
    header = c_header(TradeV1, Quote)
    for line in ("#define PYSEQ_MSG_TRADE_V1_TYPE 60003", "#define PYSEQ_MSG_TRADE_V1_VERSION 1",
                 "#define PYSEQ_MSG_QUOTE_SIZE 32", "} pyseq_msg_quote_t;",
                 '_Static_assert(offsetof(pyseq_msg_quote_t, symbol) == 20, "Quote.symbol offset");'):
        assert line in header


def test_the_c_header_rejects_two_classes_with_the_same_c_name() -> None:
    first = declare("Same", 60023, {"v": u8}, module="one")
    second = declare("Same", 60024, {"v": u8}, module="two")
    with pytest.raises(SchemaError, match="would share the C name same"):
        c_header(first, second)


class Commented(Record, msg_type=60005, version=1):
    note: string(8) = "*/ /*"


@needs_gcc
def test_the_c_header_compiles_with_strict_warnings(tmp_path: Any) -> None:
    header = tmp_path / "messages.h"
    header.write_text(c_header(AllKinds, Quote, TradeV1, TradeV2, Commented))
    subprocess.run([*GCC, "-fsyntax-only", str(header)], check=True, capture_output=True)


@needs_gcc
def test_a_c_program_reads_the_fields_python_encoded(tmp_path: Any) -> None:
    record = AllKinds(a_i8=-8, a_i16=-16, a_i32=-32, a_i64=-(1 << 62), a_u8=200, a_u16=60000,
                      a_u32=4_000_000_000, a_u64=(1 << 64) - 1, a_f32=0.5, a_f64=-1.25, flag=True,
                      text="héllo", blob=b"\x01\x02")
    (tmp_path / "messages.h").write_text(c_header(AllKinds))
    (tmp_path / "main.c").write_text(f"""
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "messages.h"
static const unsigned char payload[] = {{{", ".join(str(b) for b in record.encode())}}};
int main(void) {{
    pyseq_msg_all_kinds_t m;
    _Static_assert(sizeof payload == sizeof m, "payload size");
    memcpy(&m, payload, sizeof m);
    printf("%" PRId8 " %" PRId16 " %" PRId32 " %" PRId64 "\\n", m.a_i8, m.a_i16, m.a_i32, m.a_i64);
    printf("%" PRIu8 " %" PRIu16 " %" PRIu32 " %" PRIu64 "\\n", m.a_u8, m.a_u16, m.a_u32, m.a_u64);
    printf("%.17g %.17g %u\\n", (double)m.a_f32, m.a_f64, (unsigned)m.flag);
    printf("%.*s|%u %u %u %u\\n", (int)sizeof m.text, m.text, m.blob[0], m.blob[1], m.blob[2], m.blob[3]);
    return PYSEQ_MSG_ALL_KINDS_SIZE == {AllKinds.size} && PYSEQ_MSG_ALL_KINDS_TYPE == 60001 ? 0 : 1;
}}
""")
    subprocess.run([*GCC, "-o", str(tmp_path / "main"), str(tmp_path / "main.c")], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "main")], check=True, capture_output=True).stdout.decode()
    assert out.splitlines() == [
        f"-8 -16 -32 {-(1 << 62)}", f"200 60000 4000000000 {(1 << 64) - 1}", "0.5 -1.25 1", "héllo|1 2 0 0"]


# -------------------------------------------------------------------------------- module

def test_the_module_imports_nothing_from_pyseq_but_errors() -> None:
    source = open(schema.__file__, encoding="utf-8").read()
    imports = re.findall(r"^\s*(?:from|import)\s+(\.\S*|pyseq\S*)", source, flags=re.M)
    assert imports == [".errors"]


def test_struct_codec_is_the_declared_little_endian_format() -> None:
    assert Quote.struct.format == "<Qdi8s4s"
    assert isinstance(Quote.struct, struct.Struct)
