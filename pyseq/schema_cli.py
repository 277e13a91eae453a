"""``pyseq schema``: check that a new schema is a compatible successor of the old one, and write
the C header of a schema.

::

    pyseq schema check old/messages.py messages.py         # exit 0 compatible, 1 not (each reason), 2 usage
    pyseq schema check pyseq.refdata:AddInstrument pyseq.refdata:AddInstrumentV2 --json
    pyseq schema header pyseq.refdata -o refdata.h         # packed C structs with static asserts

OLD and NEW are each a module name or the path of a ``.py`` file, optionally followed by
``:Class`` to pick one record class.  A schema is the record classes its module's namespace holds
under public names (declared there or imported), grouped by message type; a type may have several
versions.  Each module is executed afresh under a private name, with its declarations kept out of
the process's registry (:func:`pyseq.schema.separate_registry`), so two versions of one module, or
one module twice, load side by side.

The rules, per message type:

- in both: every version both declare has the same layout (fields, kinds, defaults) in both; each
  version only NEW declares is a compatible successor of the version before it (appended fields only,
  each with a default; the old fields keep their names, positions, kinds, sizes and defaults: see
  :func:`field_problems`, which is stricter than :func:`pyseq.schema.check_compatible` on defaults,
  since two releases filling different defaults into an older payload diverge); NEW's newest
  version is not lower than OLD's;
- only in NEW: reported as new (its own versions must follow each other compatibly);
- only in OLD: removed, which is an error (the old release's messages of that type would be unread).

With ``:Class`` on either side only the picked classes' types are compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from . import schema
from .errors import SchemaCompatibilityError, SchemaError
from .schema import Field, Record

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_USAGE = 0, 1, 2

_loads = itertools.count(1)
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class LoadError(Exception):
    """A schema argument that cannot be loaded: no such file or module, an import that fails, no
    record class, or no class of the name picked."""


@dataclasses.dataclass(frozen=True)
class Schema:
    """The record classes of one side of a check, as loaded from ``spec``."""

    spec: str
    classes: tuple[type[Record], ...]  # sorted by (msg_type, version)
    picked: bool  # ``:Class`` chose one

    def versions(self) -> dict[int, dict[int, type[Record]]]:
        table: dict[int, dict[int, type[Record]]] = {}
        for cls in self.classes:
            table.setdefault(cls.msg_type, {})[cls.version] = cls
        return table


@dataclasses.dataclass
class TypeReport:
    msg_type: int
    name: str
    status: str  # unchanged, compatible, new, removed, incompatible
    old_versions: list[int]
    new_versions: list[int]
    appended: list[str]  # fields NEW's newest version has beyond OLD's newest
    problems: list[str]


@dataclasses.dataclass
class Report:
    old: str
    new: str
    types: list[TypeReport]
    general: list[str]  # problems of no one message type

    @property
    def problems(self) -> list[str]:
        """Every problem, each naming its message type."""
        return self.general + [f"{_type_label(t.msg_type)} {t.name}: {p}" for t in self.types for p in t.problems]

    @property
    def compatible(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "old": self.old, "new": self.new,
                "types": [dataclasses.asdict(t) for t in self.types], "problems": self.problems}


# ---- loading -----------------------------------------------------------------------------------

def _split(spec: str) -> tuple[str, Optional[str]]:
    head, _, tail = spec.rpartition(":")
    return (head, tail) if head and tail.isidentifier() else (spec, None)


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target or os.path.isfile(target)


def load(spec: str) -> Schema:
    """Load the schema ``spec`` names (``module``, ``path/to/file.py``, either with ``:Class``) in
    a registry of its own; :class:`LoadError` says why not."""
    target, picked = _split(spec)
    n = next(_loads)
    search_path = None
    if _is_path(target):
        if not os.path.isfile(target):
            raise LoadError(f"{spec}: no such file {target!r}")
        path = os.path.abspath(target)
        name = f"_pyseq_schema_{n}_{re.sub(r'[^0-9A-Za-z_]', '_', Path(path).stem)}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        search_path = os.path.dirname(path)  # so that it can import its neighbours
        shown = Path(path).stem
    else:
        if not _MODULE_NAME.fullmatch(target):
            raise LoadError(f"{spec}: neither a .py file nor a module name")
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError) as e:
            raise LoadError(f"{spec}: cannot find module {target!r}: {e}") from None
        if found is None:
            raise LoadError(f"{spec}: no module named {target!r}")
        if not found.has_location or found.origin is None:
            raise LoadError(f"{spec}: module {target!r} has no source file to load")
        parent, _, last = target.rpartition(".")
        name = f"{parent + '.' if parent else ''}_pyseq_schema_{n}_{last}"  # relative imports still work
        shown = target
        module_spec = importlib.util.spec_from_file_location(
            name, found.origin, submodule_search_locations=found.submodule_search_locations)
    if module_spec is None or module_spec.loader is None:
        raise LoadError(f"{spec}: cannot load {target!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    added = search_path is not None and search_path not in sys.path
    if added:
        sys.path.insert(0, search_path)  # type: ignore[arg-type]
    try:
        with schema.separate_registry():
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                text = str(e).replace(name, shown)  # its private name is no help in a message
                raise LoadError(f"{spec}: cannot load it: {type(e).__name__}: {text}") from None
            finally:
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[key]
    except SchemaError as e:  # what it imported for the first time clashes with the process's registry
        raise LoadError(f"{spec}: {e}") from None
    finally:
        if added:
            sys.path.remove(search_path)  # type: ignore[arg-type]
    return Schema(spec, _records(spec, target, vars(module), picked), picked is not None)


def _is_record(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Record) and obj is not Record


def _records(spec: str, target: str, namespace: dict[str, Any], picked: Optional[str]) -> tuple[type[Record], ...]:
    if picked is not None:
        cls = namespace.get(picked)
        if not _is_record(cls):
            names = sorted(k for k, v in namespace.items() if not k.startswith("_") and _is_record(v))
            raise LoadError(f"{spec}: {target} has no record class {picked!r}"
                            + (f"; its record classes are {', '.join(names)}" if names else ""))
        return (cls,)  # type: ignore[return-value]
    found: dict[type[Record], None] = {}
    for key, value in namespace.items():
        if not key.startswith("_") and _is_record(value):
            found[value] = None
    if not found:
        raise LoadError(f"{spec}: {target} holds no record classes")
    by_pair: dict[tuple[int, int], type[Record]] = {}
    for cls in found:
        other = by_pair.setdefault((cls.msg_type, cls.version), cls)
        if other is not cls:
            raise LoadError(f"{spec}: {other.__name__} and {cls.__name__} both declare msg_type {cls.msg_type} "
                            f"version {cls.version}")
    return tuple(sorted(found, key=lambda c: (c.msg_type, c.version)))


# ---- comparing ---------------------------------------------------------------------------------

def _factory(field: Field) -> str:
    return field.kind.name.split("(")[0]


def field_problems(before: type[Record], after: type[Record]) -> list[str]:
    """How ``after``'s fields break ``before``'s layout, one reason each (empty: ``after`` keeps every
    field of ``before`` where it was, and only appends fields that have a default).  Versions are
    not looked at."""
    problems: list[str] = []
    old_names = {f.name for f in before.fields}
    by_name = {f.name: (i, f) for i, f in enumerate(after.fields)}
    renamed_to: set[str] = set()
    for i, f in enumerate(before.fields):
        if f.name not in by_name:
            other = after.fields[i] if i < len(after.fields) else None
            if other is not None and other.name not in old_names and other.kind == f.kind:
                problems.append(f"field {f.name!r} was renamed to {other.name!r}")
                renamed_to.add(other.name)
            else:
                problems.append(f"field {f.name!r} ({f.kind!r} at offset {f.offset}) was removed")
            continue
        j, g = by_name[f.name]
        if j != i:
            problems.append(f"field {f.name!r} was reordered: it moved from position {i} (offset {f.offset}) to "
                            f"position {j} (offset {g.offset})")
        if g.kind != f.kind:
            how = "resized" if _factory(f) == _factory(g) else "retyped"
            problems.append(f"field {f.name!r} was {how} from {f.kind!r} to {g.kind!r}")
        if f.has_default and not g.has_default:
            problems.append(f"field {f.name!r} lost its default {f.default!r}: payloads that end before it "
                            f"could no longer be read")
        elif f.has_default and repr(g.default) != repr(f.default):
            problems.append(f"field {f.name!r} changed its default from {f.default!r} to {g.default!r}: two "
                            f"releases would fill different values into payloads that end before it")
    for j, g in enumerate(after.fields):
        if g.name in old_names or g.name in renamed_to:
            continue
        if j < len(before.fields):
            problems.append(f"field {g.name!r} was inserted at position {j}: fields may only be appended")
        elif not g.has_default:
            problems.append(f"appended field {g.name!r} has no default: payloads of version {before.version} "
                            f"could not be read")
    return problems


def successor_problems(before: type[Record], after: type[Record]) -> list[str]:
    """Why ``after`` is not a compatible successor of ``before`` (empty: it is)."""
    problems = field_problems(before, after)
    if after.version <= before.version:
        problems.insert(0, f"version {after.version} is not higher than {before.version}")
    try:
        schema.check_compatible(before, after)
    except SchemaCompatibilityError as e:
        if not problems:  # never expected: the rules above are at least as strict
            problems.append(str(e))
    return problems


def _same_layout_problems(a: type[Record], b: type[Record]) -> list[str]:
    problems = field_problems(a, b)
    problems += [f"field {f.name!r} was appended" for f in b.fields[len(a.fields):]
                 if f.has_default and f.name not in {g.name for g in a.fields}]
    return problems


def _type_label(msg_type: int) -> str:
    return f"msg_type {msg_type} (0x{msg_type:04x})"


def _compare_type(msg_type: int, old_v: dict[int, type[Record]], new_v: dict[int, type[Record]]) -> TypeReport:
    newest_new = new_v[max(new_v)] if new_v else None
    newest_old = old_v[max(old_v)] if old_v else None
    name = (newest_new or newest_old).__name__  # type: ignore[union-attr]
    report = TypeReport(msg_type, name, "", sorted(old_v), sorted(new_v), [], [])
    problems = report.problems
    if not new_v:
        report.status = "removed"
        problems.append(f"it was removed: NEW declares no record of this type (versions {sorted(old_v)} in OLD)")
        return report
    versions = sorted(new_v)
    if not old_v:
        for before, after in zip(versions, versions[1:]):
            problems += [f"version {before} -> {after}: {p}" for p in successor_problems(new_v[before], new_v[after])]
        report.status = "incompatible" if problems else "new"
        return report
    assert newest_old is not None and newest_new is not None
    for v in sorted(set(old_v) & set(new_v)):
        diffs = _same_layout_problems(old_v[v], new_v[v])
        if diffs:
            problems.append(f"version {v} changed without a higher version number: " + "; ".join(diffs))
    if newest_new.version < newest_old.version:
        problems.append(f"version {newest_new.version} is not higher than the old version {newest_old.version}"
                        + "".join(f"; {p}" for p in field_problems(newest_old, newest_new)))
    merged = {**new_v, **old_v}  # what the old release knows wins: new versions must follow it
    added = [v for v in versions if v not in old_v]
    for v in added:
        prev = max((u for u in merged if u < v), default=None)
        if prev is not None:
            problems += [f"version {prev} -> {v}: {p}" for p in successor_problems(merged[prev], new_v[v])]
    report.appended = [f.name for f in newest_new.fields[len(newest_old.fields):]
                       if f.name not in {g.name for g in newest_old.fields}]
    if problems:
        report.status = "incompatible"
    elif newest_new.version > newest_old.version:
        report.status = "compatible"
    else:
        report.status = "unchanged"
    return report


def compare(old: Schema, new: Schema) -> Report:
    """Check that ``new`` is a compatible successor of ``old`` (see the module docstring)."""
    old_types, new_types = old.versions(), new.versions()
    problems: list[str] = []
    if old.picked or new.picked:
        chosen = {c.msg_type for s in (old, new) if s.picked for c in s.classes}
        old_types = {t: v for t, v in old_types.items() if t in chosen}
        new_types = {t: v for t, v in new_types.items() if t in chosen}
        if old.picked and new.picked and old.classes[0].msg_type != new.classes[0].msg_type:
            problems.append(f"{old.classes[0].__name__} is {_type_label(old.classes[0].msg_type)} but "
                            f"{new.classes[0].__name__} is {_type_label(new.classes[0].msg_type)}: a successor "
                            f"keeps its message type")
    types = [_compare_type(t, old_types.get(t, {}), new_types.get(t, {}))
             for t in sorted(set(old_types) | set(new_types))]
    return Report(old.spec, new.spec, types, problems)


def check(old: str, new: str) -> Report:
    """Load ``old`` and ``new`` (module names or .py paths, optionally ``:Class``) and compare them."""
    return compare(load(old), load(new))


# ---- the command -------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    lines = []
    for t in report.types:
        head = f"{_type_label(t.msg_type)} {t.name}: "
        if t.status in ("new", "removed") or (t.status == "incompatible" and not (t.old_versions and t.new_versions)):
            versions = t.new_versions or t.old_versions
            head += f"{t.status}, version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}"
        elif t.status == "unchanged":
            head += f"unchanged, version{'s' if len(t.new_versions) > 1 else ''} {', '.join(map(str, t.new_versions))}"
        else:
            head += f"{t.status}, version {t.old_versions[-1]} -> {t.new_versions[-1]}"
            if t.appended:
                head += f", appends {', '.join(t.appended)}"
        lines.append(head)
        lines += [f"    {p}" for p in t.problems]
    lines += report.general
    counts = {s: sum(t.status == s for t in report.types) for s in ("compatible", "new", "unchanged")}
    if report.compatible:
        lines.append(f"compatible: {len(report.types)} message type{'s' if len(report.types) != 1 else ''} "
                     f"({counts['compatible']} changed, {counts['new']} new, {counts['unchanged']} unchanged)")
    else:
        n = len(report.problems)
        lines.append(f"incompatible: {n} problem{'s' if n != 1 else ''}")
    return "\n".join(lines)


def _usage_error(args: argparse.Namespace, message: str) -> int:
    args.parser.print_usage(sys.stderr)
    print(f"{args.parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _see_current_directory() -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script does not see modules in the current directory


def _run_check(args: argparse.Namespace) -> int:
    _see_current_directory()
    try:
        report = check(args.old, args.new)
    except LoadError as e:
        return _usage_error(args, str(e))
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.compatible else EXIT_INCOMPATIBLE


def _guard(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_]\w*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a C identifier")
    return text


def _run_header(args: argparse.Namespace) -> int:
    _see_current_directory()
    classes: dict[type[Record], None] = {}
    try:
        for spec in args.modules:
            classes.update(dict.fromkeys(load(spec).classes))
    except LoadError as e:
        return _usage_error(args, str(e))
    guard = args.guard
    if guard is None:
        target = _split(args.modules[0])[0]
        stem = (Path(args.output).stem if args.output else Path(target).stem if _is_path(target)
                else target.rpartition(".")[2])
        guard = "PYSEQ_" + re.sub(r"\W", "_", stem).upper() + "_H"
    try:
        header = schema.c_header(*classes, guard=guard)
    except SchemaError as e:
        print(f"{args.parser.prog}: {e}", file=sys.stderr)
        return EXIT_INCOMPATIBLE
    if args.output is None:
        sys.stdout.write(header)
        return EXIT_OK
    tmp = f"{args.output}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(header)
    os.replace(tmp, args.output)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Add ``pyseq schema check|header`` to the subcommands ``sub``."""
    p = sub.add_parser("schema", help="check schema compatibility; write a schema's C header",
                       description="Check that a new version of a message schema is a compatible successor of "
                                   "the old one, or write the C header of a schema. A schema is a module name or "
                                   "the path of a .py file, optionally with :Class to pick one record class.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser(
        "check", help="is NEW a compatible successor of OLD? exit 0 yes, 1 no",
        description="Compare the record classes of OLD and NEW, message type by message type. A type in both "
                    "must keep unchanged every version both declare (NEW may drop an older class: its newest reads old "
                    "payloads by filling defaults), and each version only NEW declares must append "
                    "fields only, each with a default, keeping the old fields' names, positions, kinds, sizes and "
                    "defaults; its version must not go down. A type only in NEW is new; a type only in OLD was "
                    "removed, which is an error. With :Class on a side, only the picked classes' types are "
                    "compared. Each module is executed afresh, apart from the process's registry, so two "
                    "versions of one module load side by side.",
        epilog="exit codes: 0 compatible, 1 incompatible (every reason is printed), 2 usage error (including "
               "a schema that cannot be loaded)")
    a.add_argument("old", metavar="OLD", help="the schema in use: MODULE or FILE.py, optionally :Class")
    a.add_argument("new", metavar="NEW", help="its proposed successor: MODULE or FILE.py, optionally :Class")
    a.add_argument("--json", action="store_true", help="one JSON object (keys: compatible, old, new, types, "
                   "problems; each type: msg_type, name, status, old_versions, new_versions, appended, problems)")
    a.set_defaults(run=_run_check, parser=a)
    h = actions.add_parser(
        "header", help="write the C header of the record classes of one or more modules",
        description="Write a C11 header declaring each record class of MODULE (sorted by message type and "
                    "version) as a packed struct, with its type, version and size as macros and static asserts "
                    "on its size and field offsets (pyseq.schema.c_header), for a team that implements in C.")
    h.add_argument("modules", metavar="MODULE", nargs="+", help="MODULE or FILE.py, optionally :Class")
    h.add_argument("-o", "--output", metavar="FILE", help="write the header to FILE (default: standard output)")
    h.add_argument("--guard", type=_guard, help="the include guard (default: PYSEQ_<NAME>_H, from FILE or MODULE)")
    h.set_defaults(run=_run_header, parser=h)
