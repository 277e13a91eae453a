"""``pyseq schema check OLD NEW`` and ``pyseq schema header``: schemas written as files and packages
in a temporary directory, loaded side by side (two versions of one module must not clash in the
registry), compared type by type; the C header compiled with the system's C compiler, its struct
sizes and offsets printed by a C program and compared with each record's numpy dtype.

Most runs go through ``pyseq.cli.main`` in this process; a few run ``python -m pyseq.cli`` as a
process, for the exit codes and for module names found from the current directory.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from cliproc import run
from pyseq import schema, schema_cli
from pyseq.cli import main
from pyseq.errors import SchemaError
from pyseq.refdata import ADD_INSTRUMENT

HEAD = "from pyseq.schema import Record, boolean, f32, f64, i8, i16, i32, i64, raw, string, u8, u16, u32, u64\n"

ORDER_V1 = """
class Order(Record, msg_type=61001, version=1):
    order_id: i64
    price: f64
    qty: i32 = 0
    symbol: string(8) = ""

class Cancel(Record, msg_type=61002, version=1):
    order_id: i64
"""

CANCEL = """
class Cancel(Record, msg_type=61002, version=1):
    order_id: i64
"""

ORDER_V2 = """
class Order(Record, msg_type=61001, version=2):
    order_id: i64
    price: f64
    qty: i32 = 0
    symbol: string(8) = ""
    venue: string(4) = "XNAS"
    flags: u8 = 0
""" + CANCEL


def write(directory: Path, name: str, body: str, head: str = HEAD) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + textwrap.dedent(body))
    return str(path)


def check(capsys: pytest.CaptureFixture[str], old: str, new: str) -> tuple[int, dict[str, Any]]:
    code = main(["schema", "check", old, new, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_type(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["msg_type"]: t for t in report["types"]}


@pytest.fixture
def old(tmp_path: Path) -> str:
    return write(tmp_path, "old/messages.py", ORDER_V1)


# ---- compatible successors ---------------------------------------------------------------------

def test_a_successor_that_appends_fields_with_defaults_is_compatible(
        old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new/messages.py", ORDER_V2)
    code, report = check(capsys, old, new)
    assert code == 0 and report["compatible"] is True and report["problems"] == []
    types = by_type(report)
    assert types[61001] | {"problems": []} == {
        "msg_type": 61001, "name": "Order", "status": "compatible", "old_versions": [1], "new_versions": [2],
        "appended": ["venue", "flags"], "problems": []}
    assert types[61002]["status"] == "unchanged"


def test_the_text_report_names_each_type_its_versions_and_the_appended_fields(
        old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new/messages.py", ORDER_V2)
    assert main(["schema", "check", old, new]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "msg_type 61001 (0xee49) Order: compatible, version 1 -> 2, appends venue, flags",
        "msg_type 61002 (0xee4a) Cancel: unchanged, version 1",
        "compatible: 2 message types (1 changed, 0 new, 1 unchanged)"]


def test_a_schema_is_a_compatible_successor_of_itself(old: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check(capsys, old, old)
    assert code == 0 and {t["status"] for t in report["types"]} == {"unchanged"}


def test_a_new_module_keeping_the_old_version_beside_the_new_one_is_compatible(
        old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = ORDER_V1.replace(CANCEL, "") + ORDER_V2.replace("class Order(", "class OrderV2(")
    new = write(tmp_path, "new/messages.py", both)
    code, report = check(capsys, old, new)
    assert code == 0, report
    assert by_type(report)[61001] | {"problems": []} == {
        "msg_type": 61001, "name": "OrderV2", "status": "compatible", "old_versions": [1],
        "new_versions": [1, 2], "appended": ["venue", "flags"], "problems": []}


def test_the_reference_data_v2_is_a_compatible_successor_of_v1(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check(capsys, "pyseq.refdata:AddInstrument", "pyseq.refdata:AddInstrumentV2")
    assert code == 0
    assert [(t["msg_type"], t["status"], t["appended"]) for t in report["types"]] == [
        (ADD_INSTRUMENT, "compatible", ["max_order_qty"])]


def test_one_module_against_itself_loads_twice_without_a_registry_clash(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check(capsys, "pyseq.refdata", "pyseq.refdata")
    assert code == 0
    assert {t["msg_type"]: t["new_versions"] for t in report["types"]} == {
        0x0101: [1, 2], 0x0102: [1], 0x0103: [1], 0x0104: [1]}


# ---- refusals ----------------------------------------------------------------------------------

ORDER_FIELDS = ["order_id: i64", "price: f64", "qty: i32 = 0", 'symbol: string(8) = ""']


def order(*fields: str, version: int = 2) -> str:
    return f"class Order(Record, msg_type=61001, version={version}):\n" + \
        "".join(f"    {f}\n" for f in fields) + CANCEL


REFUSALS = {
    "removed": (order("order_id: i64", "price: f64", 'symbol: string(8) = ""'),
                "field 'qty' (i32 at offset 16) was removed"),
    "reordered": (order("price: f64", "order_id: i64", "qty: i32 = 0", 'symbol: string(8) = ""'),
                  "field 'order_id' was reordered: it moved from position 0 (offset 0) to position 1 (offset 8)"),
    "retyped": (order("order_id: i64", "price: f64", "qty: i64 = 0", 'symbol: string(8) = ""'),
                "field 'qty' was retyped from i32 to i64"),
    "retyped-same-size": (order("order_id: u64", *ORDER_FIELDS[1:]), "field 'order_id' was retyped from i64 to u64"),
    "resized-string": (order(*ORDER_FIELDS[:3], 'symbol: string(16) = ""'),
                       "field 'symbol' was resized from string(8) to string(16)"),
    "renamed": (order("order_id: i64", "price: f64", "quantity: i32 = 0", 'symbol: string(8) = ""'),
                "field 'qty' was renamed to 'quantity'"),
    "inserted": (order("order_id: i64", "venue: u8 = 0", *ORDER_FIELDS[1:]),
                 "field 'venue' was inserted at position 1: fields may only be appended"),
    "appended-without-default": (order(*ORDER_FIELDS, "venue: string(4)"),
                                 "appended field 'venue' has no default: payloads of version 1 could not be read"),
    "default-changed": (order(*ORDER_FIELDS[:2], "qty: i32 = 100", ORDER_FIELDS[3]),
                        "field 'qty' changed its default from 0 to 100"),
    "default-lost": (order(*ORDER_FIELDS[:2], "qty: i32", ORDER_FIELDS[3]), "field 'qty' lost its default 0"),
    "version-not-higher": (order(*ORDER_FIELDS, "venue: u8 = 0", version=1),
                           "version 1 changed without a higher version number: field 'venue' was appended"),
    "same-version-retyped": (order("order_id: i64", "price: f32", *ORDER_FIELDS[2:], version=1),
                             "version 1 changed without a higher version number: field 'price' was retyped "
                             "from f64 to f32"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_an_incompatible_successor_is_refused_with_the_reason(
        case: str, old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body, reason = REFUSALS[case]
    new = write(tmp_path, "new/messages.py", body)
    code, report = check(capsys, old, new)
    assert code == 1 and report["compatible"] is False
    order_report = by_type(report)[61001]
    assert order_report["status"] == "incompatible"
    assert any(reason in p for p in order_report["problems"]), order_report["problems"]
    assert any(p.startswith("msg_type 61001 (0xee49) Order: ") and reason in p for p in report["problems"])
    assert by_type(report)[61002]["status"] == "unchanged"


def test_a_version_lower_than_the_old_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.py", order(*ORDER_FIELDS, version=3))
    new = write(tmp_path, "new.py", order(*ORDER_FIELDS, "venue: u8 = 0", version=2))
    code, report = check(capsys, old, new)
    assert code == 1
    assert by_type(report)[61001]["problems"] == ["version 2 is not higher than the old version 3"]


def test_the_text_report_prints_every_reason_and_exits_1(old: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.py", order("order_id: i64", "price: f32", "qty: i32 = 0", 'symbol: string(4) = ""'))
    assert main(["schema", "check", old, new]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "msg_type 61001 (0xee49) Order: incompatible, version 1 -> 2",
        "    version 1 -> 2: field 'price' was retyped from f64 to f32",
        "    version 1 -> 2: field 'symbol' was resized from string(8) to string(4)",
        "msg_type 61002 (0xee4a) Cancel: unchanged, version 1",
        "incompatible: 2 problems"]


def test_the_versions_only_new_declares_must_follow_each_other(
        old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.py", ORDER_V2 + """
class Modify(Record, msg_type=61003, version=1):
    order_id: i64
    qty: i32

class ModifyV2(Record, msg_type=61003, version=2):
    order_id: i64
""")
    code, report = check(capsys, old, new)
    assert code == 1
    assert by_type(report)[61003]["problems"] == ["version 1 -> 2: field 'qty' (i32 at offset 8) was removed"]


# ---- new and removed types ---------------------------------------------------------------------

def test_a_type_only_new_declares_is_reported_as_new(old: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.py", ORDER_V1 + """
class Modify(Record, msg_type=61003, version=1):
    order_id: i64
""")
    code, report = check(capsys, old, new)
    assert code == 0
    assert by_type(report)[61003] == {"msg_type": 61003, "name": "Modify", "status": "new", "old_versions": [],
                                      "new_versions": [1], "appended": [], "problems": []}
    main(["schema", "check", old, new])
    assert "msg_type 61003 (0xee4b) Modify: new, version 1" in capsys.readouterr().out


def test_a_type_only_old_declares_is_removed_which_is_an_error(
        old: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.py", order(*ORDER_FIELDS, version=1).replace(CANCEL, ""))
    code, report = check(capsys, old, new)
    assert code == 1
    assert report["problems"] == ["msg_type 61002 (0xee4a) Cancel: it was removed: NEW declares no record of this "
                                  "type (versions [1] in OLD)"]
    assert by_type(report)[61002]["status"] == "removed"


def test_picking_one_class_compares_only_its_type(old: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.py", ORDER_V2.replace(CANCEL, ""))  # Cancel removed, but not looked at
    code, report = check(capsys, old, f"{new}:Order")
    assert code == 0 and [t["msg_type"] for t in report["types"]] == [61001]
    code, report = check(capsys, f"{old}:Cancel", f"{new}:Order")
    assert code == 1
    assert report["problems"][0] == ("Cancel is msg_type 61002 (0xee4a) but Order is msg_type 61001 (0xee49): "
                                     "a successor keeps its message type")


# ---- files and modules -------------------------------------------------------------------------

def test_two_files_of_one_schema_load_side_by_side_without_touching_the_registry(old: str, tmp_path: Path) -> None:
    new = write(tmp_path, "new/messages.py", ORDER_V2)
    first, second, again = schema_cli.load(old), schema_cli.load(new), schema_cli.load(old)
    assert [(c.__name__, c.msg_type, c.version) for c in first.classes] == [("Order", 61001, 1), ("Cancel", 61002, 1)]
    assert [c.version for c in second.classes] == [2, 1]
    assert first.classes[0] is not again.classes[0]  # each load is a fresh execution
    with pytest.raises(SchemaError, match="no record is declared for msg_type 61001"):
        schema.lookup(61001)
    assert not [m for m in sys.modules if "_pyseq_schema_" in m]


def test_a_file_with_future_annotations_and_annotated_fields_loads(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    head = "from __future__ import annotations\nfrom typing import Annotated\n" + HEAD
    old = write(tmp_path, "old.py", ORDER_V1, head=head)
    new = write(tmp_path, "new.py", ORDER_V2.replace("order_id: i64", "order_id: Annotated[int, i64]"), head=head)
    assert check(capsys, old, new)[0] == 0


def test_a_file_may_import_its_neighbours_and_a_shared_module_joins_the_registry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = f"shared_{uuid.uuid4().hex[:8]}"
    write(tmp_path, f"dir/{shared}.py", CANCEL.replace("61002", "61077"))
    new = write(tmp_path, "dir/new.py", f"from {shared} import Cancel\n" + ORDER_V1.replace(CANCEL, ""))
    old = write(tmp_path, "old.py", ORDER_V1.replace(CANCEL, "") + CANCEL.replace("61002", "61077"))
    try:
        code, report = check(capsys, old, new)
        assert code == 0 and by_type(report)[61077]["status"] == "unchanged"
        # a module imported for the first time stays imported, and its records registered, as if imported outside
        assert schema.lookup(61077) is sys.modules[shared].Cancel
        assert str(tmp_path / "dir") not in sys.path
    finally:
        sys.modules.pop(shared, None)


def test_modules_are_found_by_name_relative_imports_included(tmp_path: Path) -> None:
    write(tmp_path, "oldschema/__init__.py", "", head="")
    write(tmp_path, "oldschema/base.py", CANCEL)
    write(tmp_path, "oldschema/messages.py", "from .base import Cancel\n" + ORDER_V1.replace(CANCEL, ""))
    write(tmp_path, "newschema.py", ORDER_V2)
    out = run("schema", "check", "oldschema.messages", "newschema", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [(t["name"], t["status"]) for t in json.loads(out.stdout)["types"]] == [
        ("Order", "compatible"), ("Cancel", "unchanged")]
    out = run("schema", "check", "oldschema/messages.py", "newschema.py:Order", cwd=tmp_path)
    assert out.returncode == 2 and "cannot load it: ImportError" in out.stderr  # a file has no package


def test_a_package_is_a_schema_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "pkg_v1/__init__.py", "from .messages import *\n", head="")
    write(tmp_path, "pkg_v1/messages.py", ORDER_V1)
    sys.path.insert(0, str(tmp_path))
    try:
        code, report = check(capsys, "pkg_v1", write(tmp_path, "new.py", ORDER_V2))
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 0 and [t["status"] for t in report["types"]] == ["compatible", "unchanged"]
    assert "pkg_v1" not in sys.modules


# ---- usage errors and exit codes ---------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["missing.py", "new.py"], "missing.py: no such file 'missing.py'"),
    (["not a module", "new.py"], "not a module: neither a .py file nor a module name"),
    (["no_such_module_here", "new.py"], "no_such_module_here: no module named 'no_such_module_here'"),
    (["old.py:Nope", "new.py"], "old.py:Nope: old.py has no record class 'Nope'; its record classes are Cancel, Order"),
    (["old.py:Record", "new.py"], "old.py has no record class 'Record'"),
    (["broken.py", "new.py"], "broken.py: cannot load it: ZeroDivisionError: division by zero"),
    (["bad_record.py", "new.py"], "cannot load it: SchemaError: Bad.x: <class 'int'> is not a field kind"),
    (["empty.py", "new.py"], "empty.py: empty.py holds no record classes"),
    (["twice.py", "new.py"], "twice.py: AddInstrument and Mine both declare msg_type 257 version 1"),
    (["clash.py", "new.py"], "cannot load it: SchemaError: clash.B: msg_type 61001 version 1 is already declared"),
    (["exits.py", "new.py"], "exits.py: cannot load it: SystemExit: 3"),
])
def test_a_schema_that_cannot_be_loaded_is_a_usage_error(
        args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "old.py", ORDER_V1)
    write(tmp_path, "new.py", ORDER_V2)
    write(tmp_path, "broken.py", ORDER_V1 + "1 / 0\n")
    write(tmp_path, "bad_record.py", "class Bad(Record, msg_type=5):\n    x: int\n")
    write(tmp_path, "empty.py", "X = 1\n")
    write(tmp_path, "twice.py", "from pyseq.refdata import AddInstrument\nclass Mine(Record, msg_type=257):\n"
                                "    x: u8\n")
    write(tmp_path, "clash.py", "class A(Record, msg_type=61001):\n    x: u8\nclass B(Record, msg_type=61001):\n"
                                "    y: u8\n")
    write(tmp_path, "exits.py", "raise SystemExit(3)\n")
    assert main(["schema", "check", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pyseq schema check") and message in err, err


@pytest.mark.parametrize("argv, code, stream, text", [
    (["schema", "--help"], 0, "out", "usage: pyseq schema"),
    (["schema", "check", "--help"], 0, "out", "exit codes: 0 compatible, 1 incompatible"),
    (["schema", "header", "--help"], 0, "out", "usage: pyseq schema header"),
    (["schema"], 2, "err", "required: ACTION"),
    (["schema", "check", "only-one.py"], 2, "err", "required: NEW"),
    (["schema", "header"], 2, "err", "required: MODULE"),
    (["schema", "header", "pyseq.refdata", "--guard", "not-c"], 2, "err", "is not a C identifier"),
])
def test_the_usage_of_schema_check_and_header(argv: list[str], code: int, stream: str, text: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    assert text in getattr(capsys.readouterr(), stream)


def test_the_exit_codes_of_the_command_as_a_process(old: str, tmp_path: Path) -> None:
    good = write(tmp_path, "good.py", ORDER_V2)
    bad = write(tmp_path, "bad.py", REFUSALS["retyped"][0])
    compatible, incompatible, usage = (run("schema", "check", old, good), run("schema", "check", old, bad),
                                       run("schema", "check", old, str(tmp_path / "nowhere.py")))
    assert (compatible.returncode, incompatible.returncode, usage.returncode) == (0, 1, 2)
    assert compatible.stdout.endswith("compatible: 2 message types (1 changed, 0 new, 1 unchanged)\n")
    assert "field 'qty' was retyped from i32 to i64" in incompatible.stdout and incompatible.stderr == ""
    assert "no such file" in usage.stderr and usage.stdout == ""
    as_json = run("schema", "check", old, bad, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["compatible"] is False


# ---- the C header ------------------------------------------------------------------------------

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")
STRICT = ["-std=c11", "-Wall", "-Wextra", "-Werror"]

EVERY_KIND = """
class EveryKind(Record, msg_type=61010, version=1):
    a_i8: i8
    a_u64: u64
    a_bool: boolean = False
    a_i16: i16 = -1
    a_f32: f32 = 0.5
    text: string(5) = "*/ x"
    a_u16: u16 = 0
    blob: raw(3) = b""
    a_i32: i32 = 0
    a_u32: u32 = 0
    a_f64: f64 = 0.0
    a_u8: u8 = 0
    a_i64: i64 = 0
"""


def test_header_writes_the_c_header_of_every_record_of_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "header", "pyseq.refdata"]) == 0
    out = capsys.readouterr().out
    for line in ("#ifndef PYSEQ_REFDATA_H", "#define PYSEQ_MSG_ADD_INSTRUMENT_V2_VERSION 2",
                 "#define PYSEQ_MSG_ADD_INSTRUMENT_SIZE 35", "} pyseq_msg_resume_t;"):
        assert line in out.splitlines()
    from pyseq import refdata
    assert out == schema.c_header(refdata.AddInstrument, refdata.AddInstrumentV2, refdata.UpdateInstrument,
                                  refdata.Halt, refdata.Resume, guard="PYSEQ_REFDATA_H")


@needs_cc
def test_the_header_compiles_and_its_sizes_and_offsets_are_the_records_dtypes(tmp_path: Path) -> None:
    schema_file = write(tmp_path, "kinds.py", EVERY_KIND + ORDER_V2)
    header = tmp_path / "messages.h"
    out = run("schema", "header", schema_file, "pyseq.refdata:AddInstrumentV2", "-o", str(header))
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert "#ifndef PYSEQ_MESSAGES_H" in header.read_text()
    subprocess.run([CC, *STRICT, "-fsyntax-only", str(header)], check=True, capture_output=True, timeout=60)

    classes = [*schema_cli.load(schema_file).classes, *schema_cli.load("pyseq.refdata:AddInstrumentV2").classes]
    lines, expected = [], []
    for cls in classes:
        c_name = schema._c_name(cls)
        lines.append(f'printf("{c_name} %zu\\n", sizeof(pyseq_msg_{c_name}_t));')
        expected.append(f"{c_name} {cls.dtype.itemsize}")
        for name in cls.dtype.names:
            lines.append(f'printf("{c_name}.{name} %zu %zu\\n", offsetof(pyseq_msg_{c_name}_t, {name}), '
                         f'sizeof(((pyseq_msg_{c_name}_t *)0)->{name}));')
            dtype, offset = cls.dtype.fields[name][:2]
            expected.append(f"{c_name}.{name} {offset} {dtype.itemsize}")
    program = tmp_path / "layout.c"
    program.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "messages.h"\nint main(void) {\n    '
                       + "\n    ".join(lines) + "\n    return 0;\n}\n")
    subprocess.run([CC, *STRICT, "-o", str(tmp_path / "layout"), str(program)], check=True, capture_output=True,
                   timeout=60)
    printed = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True, timeout=30)
    assert printed.stdout.splitlines() == expected
    assert "every_kind 51" in expected and "add_instrument_v2 43" in expected


def test_header_refuses_two_records_with_one_c_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write(tmp_path, "one.py", ORDER_V1)
    two = write(tmp_path, "two.py", ORDER_V2)
    assert main(["schema", "header", one, two]) == 1
    assert "would share the C name order" in capsys.readouterr().err


def test_header_takes_its_guard_from_the_output_file_or_the_option(tmp_path: Path) -> None:
    schema_file = write(tmp_path, "kinds.py", EVERY_KIND)
    assert main(["schema", "header", schema_file, "-o", str(tmp_path / "order-book.h")]) == 0
    assert "#ifndef PYSEQ_ORDER_BOOK_H" in (tmp_path / "order-book.h").read_text()
    assert main(["schema", "header", schema_file, "-o", str(tmp_path / "x.h"), "--guard", "MY_H"]) == 0
    assert (tmp_path / "x.h").read_text().splitlines()[8:10] == ["#ifndef MY_H", "#define MY_H"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kinds.py", "order-book.h", "x.h"]
