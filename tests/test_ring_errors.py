"""Every bad input of issue 2, point 6 gets its own clear error; rings are private by default; readers
cannot write the stream; one writer per ring.

Operations on closed handles, and writes into a reader's mappings, run in a child process: if one
of them touches unmapped memory the child dies of SIGSEGV and the test fails with that exit code,
instead of taking the whole test run down.
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import struct
import time
from typing import Any, Callable, Optional

import numpy as np
import pytest

import pyseq
from childproc import Children
from conftest import shm_file

NAME_MAX = pyseq.ring.NAME_MAX


def patch(name: str, offset: int, data: bytes) -> None:
    with open(shm_file(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def make_ring_file(name: str, **shape: Any) -> int:
    """Create a ring, close its writer, and return its file length."""
    with pyseq.Ring.create(name, **shape):
        pass
    return os.path.getsize(shm_file(name))


# ---- names ----------------------------------------------------------------------------------------

BAD_NAMES = ["", "a/b", "/leading", "trailing/", "..", "../etc", "x" * (NAME_MAX + 1), "has space", "tab\tname",
             "nul\0name", "-dash-first", ".dot-first", "naïve", "semi;colon", "star*", "new\nline"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("call", ["create", "attach", "remove", "exists"])
def test_a_bad_ring_name_is_a_ring_name_error(bad: str, call: str) -> None:
    with pytest.raises(pyseq.RingNameError) as info:
        getattr(pyseq.Ring, call)(bad)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


@pytest.mark.parametrize("bad", [None, 5, b"bytes-name", ["list"], 3.5], ids=repr)
@pytest.mark.parametrize("call", ["create", "attach", "remove"])
def test_a_ring_name_that_is_not_a_str_is_a_ring_name_error(bad: Any, call: str) -> None:
    with pytest.raises(pyseq.RingNameError, match="str"):
        getattr(pyseq.Ring, call)(bad)


def test_the_name_limit_leaves_room_in_the_header_name_field() -> None:
    assert 16 <= NAME_MAX < pyseq._native.lib.PYSEQ_RING_NAME_LENGTH


def test_a_name_of_the_longest_allowed_length_works(ring_names: Callable[[], str]) -> None:
    name = ring_names()
    longest = (name + "x" * NAME_MAX)[:NAME_MAX]
    try:
        with pyseq.Ring.create(longest, capacity=2, slot_size=64) as ring:
            ring.publish(1, b"ok")
            with pyseq.Ring.attach(longest) as attached:
                assert attached.reader().read(timeout=1).payload == b"ok"
    finally:
        pyseq.Ring.remove(longest)
    with pytest.raises(pyseq.RingNameError, match=str(NAME_MAX)):
        pyseq.Ring.create(longest + "y")


def test_a_refused_name_creates_nothing_in_dev_shm() -> None:
    before = set(os.listdir("/dev/shm"))
    for bad in BAD_NAMES:
        with pytest.raises(pyseq.RingNameError):
            pyseq.Ring.create(bad)
    assert {f for f in set(os.listdir("/dev/shm")) - before if f.startswith("pyseq.")} == set()


# ---- missing, foreign, wrong version, truncated, empty ----------------------------------------------


def test_attaching_a_missing_ring_is_a_ring_not_found_error(ring_name: str) -> None:
    with pytest.raises(pyseq.RingNotFoundError, match=ring_name) as info:
        pyseq.Ring.attach(ring_name)
    assert isinstance(info.value, FileNotFoundError)


def test_attach_with_a_timeout_waits_for_a_missing_ring_then_raises(ring_name: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(pyseq.RingNotFoundError):
        pyseq.Ring.attach(ring_name, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3.0


def test_a_foreign_file_is_a_ring_format_error(ring_name: str) -> None:
    garbage = b"this is not a pyseq ring, just some file\n" * 400
    with open(shm_file(ring_name), "wb") as f:
        f.write(garbage)
    with pytest.raises(pyseq.RingFormatError, match="not a pyseq ring") as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError


def test_a_random_file_is_a_ring_format_error(ring_name: str) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(1, 256, size=3 * 4096, dtype=np.uint8).tobytes()
    with open(shm_file(ring_name), "wb") as f:
        f.write(data)
    with pytest.raises(pyseq.RingFormatError) as info:
        pyseq.Ring.attach(ring_name, timeout=0.2)
    assert type(info.value) is pyseq.RingFormatError


def test_a_short_foreign_file_is_a_ring_format_error(ring_name: str) -> None:
    with open(shm_file(ring_name), "wb") as f:
        f.write(b"#!/bin/sh\necho hello\n")
    with pytest.raises(pyseq.RingFormatError) as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError


def test_another_major_layout_version_is_a_ring_format_error(ring_name: str) -> None:
    make_ring_file(ring_name, capacity=8, slot_size=64)
    patch(ring_name, 8, struct.pack("<I", (2 << 16) | 0))
    with pytest.raises(pyseq.RingFormatError, match="version") as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError


def test_a_ring_with_a_newer_minor_layout_version_attaches(ring_name: str) -> None:
    make_ring_file(ring_name, capacity=8, slot_size=64)
    patch(ring_name, 8, struct.pack("<I", (1 << 16) | 7))
    with pyseq.Ring.attach(ring_name) as ring:
        assert ring.capacity == 8


@pytest.mark.parametrize("offset, value, what", [
    (16, struct.pack("<Q", 12), "capacity not a power of two"),
    (16, struct.pack("<Q", 1 << 20), "capacity larger than the file"),
    (12, struct.pack("<I", 100), "slot size not a multiple of 64"),
    (24, struct.pack("<I", 0), "no cursor entries"),
    (48, struct.pack("<Q", 1 << 40), "file length"),
    (40, struct.pack("<Q", 1 << 40), "slots offset out of the file"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_header_with_inconsistent_sizes_is_a_ring_format_error(ring_name: str, offset: int, value: bytes,
                                                                 what: str) -> None:
    make_ring_file(ring_name, capacity=8, slot_size=64)
    patch(ring_name, offset, value)
    with pytest.raises(pyseq.RingFormatError) as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError, what


def test_a_truncated_ring_is_a_ring_format_error(ring_name: str) -> None:
    length = make_ring_file(ring_name, capacity=64, slot_size=128)
    os.truncate(shm_file(ring_name), length - 4096)
    with pytest.raises(pyseq.RingFormatError, match="truncated") as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError


def test_a_ring_truncated_inside_its_header_is_a_ring_format_error(ring_name: str) -> None:
    make_ring_file(ring_name, capacity=64, slot_size=128)
    os.truncate(shm_file(ring_name), 100)
    with pytest.raises(pyseq.RingFormatError) as info:
        pyseq.Ring.attach(ring_name)
    assert type(info.value) is pyseq.RingFormatError


def test_an_empty_ring_file_is_a_ring_not_ready_error(ring_name: str) -> None:
    open(shm_file(ring_name), "wb").close()
    with pytest.raises(pyseq.RingNotReadyError):
        pyseq.Ring.attach(ring_name)


def test_attach_with_a_timeout_waits_for_an_empty_ring_then_raises_not_ready(ring_name: str) -> None:
    open(shm_file(ring_name), "wb").close()
    t0 = time.monotonic()
    with pytest.raises(pyseq.RingNotReadyError):
        pyseq.Ring.attach(ring_name, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3.0


def test_a_sized_but_unformatted_ring_is_a_ring_not_ready_error(ring_name: str) -> None:
    with open(shm_file(ring_name), "wb") as f:
        f.truncate(3 * 4096)
    with pytest.raises(pyseq.RingNotReadyError):
        pyseq.Ring.attach(ring_name)


# ---- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [
    {"capacity": 0}, {"capacity": 1}, {"capacity": 3}, {"capacity": 1000}, {"capacity": -4},
    {"capacity": 2 ** 33}, {"capacity": 8.0}, {"capacity": True}, {"capacity": "8"},
    {"slot_size": 0}, {"slot_size": 32}, {"slot_size": 63}, {"slot_size": 100}, {"slot_size": 2 ** 25},
    {"slot_size": -64}, {"slot_size": 64.0},
    {"max_readers": 0}, {"max_readers": -1}, {"max_readers": 4097}, {"max_readers": None},
    {"first_sequence": 0}, {"first_sequence": -5},
    {"reader_timeout": 0}, {"reader_timeout": -1.0},
], ids=repr)
def test_a_bad_ring_shape_is_a_ring_config_error_and_creates_nothing(ring_name: str, shape: dict) -> None:
    args = {"capacity": 8, "slot_size": 64, **shape}
    with pytest.raises(pyseq.RingConfigError) as info:
        pyseq.Ring.create(ring_name, **args)
    assert isinstance(info.value, ValueError)
    assert not pyseq.Ring.exists(ring_name)


# ---- one writer -------------------------------------------------------------------------------------


def hold_the_ring_as_writer(name: str, ready: Any, release: Any) -> int:
    with pyseq.Ring.create(name, capacity=8, slot_size=64) as ring:
        ring.publish(1, b"from the first writer")
        ready.set()
        release.wait(60)
    return os.getpid()


def test_creating_a_ring_whose_writer_lives_in_another_process_is_a_ring_exists_error(
        ring_name: str, children: Children) -> None:
    ready, release = children.event(), children.event()
    children.start("writer", hold_the_ring_as_writer, ring_name, ready, release)
    assert ready.wait(30)
    pid = children.pid("writer")
    with pytest.raises(pyseq.RingExistsError, match=str(pid)) as info:
        pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    assert isinstance(info.value, FileExistsError)
    with pyseq.Ring.attach(ring_name) as ring:  # the refusal changed nothing
        assert ring.info()["writer_pid"] == pid
        assert ring.reader().read(timeout=1).payload == b"from the first writer"
    release.set()
    assert children.result("writer", timeout=30) == pid


def test_creating_a_ring_this_process_already_writes_is_a_ring_exists_error(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        with pytest.raises(pyseq.RingExistsError):
            pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
        assert ring.publish(1, b"still the writer") == 1


def test_creating_over_a_ring_whose_writer_was_killed_replaces_it(
        ring_name: str, children: Children, caplog: pytest.LogCaptureFixture) -> None:
    ready, release = children.event(), children.event()
    children.start("writer", hold_the_ring_as_writer, ring_name, ready, release)
    assert ready.wait(30)
    old_pid = children.pid("writer")
    children.kill("writer")
    with pyseq.Ring.attach(ring_name) as orphan:
        assert orphan.info()["writer_pid"] == old_pid
        assert orphan.info()["writer_alive"] is False
    with caplog.at_level(logging.WARNING, logger="pyseq"):
        with pyseq.Ring.create(ring_name, capacity=16, slot_size=128) as ring:
            assert (ring.capacity, ring.slot_size, ring.published_sequence) == (16, 128, 0)
            assert ring.info()["writer_pid"] == os.getpid() != old_pid
            assert ring.publish(1, b"new") == 1
    assert any(ring_name in r.getMessage() for r in caplog.records)


def test_creating_over_a_ring_whose_writer_closed_it_replaces_it(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        ring.publish(1, b"old")
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        assert ring.published_sequence == 0


def test_creating_over_a_ring_being_created_is_refused_until_its_creator_is_late(ring_name: str) -> None:
    open(shm_file(ring_name), "wb").close()  # a creator between shm_open and ftruncate
    with pytest.raises(pyseq.RingExistsError):
        pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    old = time.time() - 3600
    os.utime(shm_file(ring_name), (old, old))  # ... and abandoned an hour ago
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        assert ring.publish(1, b"x") == 1


def test_publishing_through_an_attached_handle_is_a_not_writer_error(ring_names: Callable[[], str]) -> None:
    name = ring_names()
    with pyseq.Ring.create(name, capacity=8, slot_size=64) as ring, \
            pyseq.Ring.create(ring_names(), capacity=8, slot_size=64) as other, \
            pyseq.Ring.attach(name) as attached:
        assert ring.is_writer and not attached.is_writer
        other_reader = other.reader()
        other.publish(1, b"to forward")
        other_reader.read(timeout=1)
        calls = {
            "publish": lambda: attached.publish(1, b"x"),
            "try_publish": lambda: attached.try_publish(1, b"x"),
            "publish_batch": lambda: attached.publish_batch(1, np.zeros((2, 8), dtype=np.uint8)),
            "forward": lambda: attached.forward(other_reader),
            "heartbeat": lambda: attached.heartbeat(),
            "next_sequence": lambda: attached.next_sequence,
        }
        for what, call in calls.items():
            with pytest.raises(pyseq.NotWriterError):
                call()
                pytest.fail(f"{what} on an attached handle did not raise")
        assert ring.published_sequence == 0


# ---- payload sizes ---------------------------------------------------------------------------------


def test_a_payload_larger_than_the_slot_is_a_message_too_large_error(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=128) as ring:
        assert ring.max_payload == 96
        assert ring.publish(1, b"x" * 96) == 1
        for too_big in (b"x" * 97, bytearray(1000), np.zeros(97, dtype=np.uint8)):
            with pytest.raises(pyseq.MessageTooLargeError, match="96") as info:
                ring.publish(1, too_big)
            assert isinstance(info.value, ValueError)
            with pytest.raises(pyseq.MessageTooLargeError):
                ring.try_publish(1, too_big)
        with pytest.raises(pyseq.MessageTooLargeError):
            ring.publish_batch(1, np.zeros((3, 97), dtype=np.uint8))
        with pytest.raises(pyseq.MessageTooLargeError):
            ring.publish_batch(1, np.zeros(3, dtype=[("a", "u1", (97,))]))
        assert ring.published_sequence == 1 and ring.next_sequence == 2


def test_forwarding_a_message_too_large_for_the_target_is_a_message_too_large_error(
        ring_names: Callable[[], str]) -> None:
    with pyseq.Ring.create(ring_names(), capacity=8, slot_size=256) as big, \
            pyseq.Ring.create(ring_names(), capacity=8, slot_size=64) as small:
        reader = big.reader()
        big.publish(1, b"y" * 200)
        big.publish(1, b"y" * 32)
        reader.read_seq(timeout=1)
        with pytest.raises(pyseq.MessageTooLargeError):
            small.forward(reader)
        assert small.published_sequence == 0
        reader.read_seq(timeout=1)
        assert small.forward(reader) == 1


@pytest.mark.parametrize("field, value", [("msg_type", 1 << 16), ("msg_type", -1), ("schema_version", 1 << 16),
                                          ("source", 1 << 32), ("source", -1), ("timestamp_ns", -5)])
def test_a_frame_field_out_of_range_is_refused_and_publishes_nothing(ring_name: str, field: str,
                                                                     value: int) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        kwargs = {"msg_type": 1, field: value}
        msg_type = kwargs.pop("msg_type")
        with pytest.raises((ValueError, OverflowError)):
            ring.publish(msg_type, b"x", **kwargs)
        assert ring.published_sequence == 0


# ---- permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_a_ring_is_created_mode_0600_by_default(ring_name: str, umask: int) -> None:
    old = os.umask(umask)
    try:
        with pyseq.Ring.create(ring_name, capacity=8, slot_size=64):
            assert os.stat(shm_file(ring_name)).st_mode & 0o7777 == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o644])
def test_the_mode_argument_widens_the_file_mode(ring_name: str, mode: int) -> None:
    old = os.umask(0o077)
    try:
        with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, mode=mode):
            assert os.stat(shm_file(ring_name)).st_mode & 0o7777 == mode
    finally:
        os.umask(old)


def attach_as_another_user(name: str) -> str:
    os.setgid(65534)
    os.setuid(65534)  # nobody
    try:
        with pyseq.Ring.attach(name) as ring:
            return ring.reader("nobody").read(timeout=5).payload.decode()
    except pyseq.RingPermissionError as e:
        assert isinstance(e, PermissionError)
        return "RingPermissionError"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_cannot_attach_a_ring_created_with_the_default_mode(ring_name: str,
                                                                         children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64) as ring:
        ring.publish(1, b"private")
        children.start("nobody", attach_as_another_user, ring_name)
        assert children.result("nobody", timeout=60) == "RingPermissionError"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_can_read_a_ring_created_with_a_wider_mode(ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, mode=0o666) as ring:
        ring.publish(1, b"shared")
        children.start("nobody", attach_as_another_user, ring_name)
        assert children.result("nobody", timeout=60) == "shared"


def mappings_of(name: str) -> list[tuple[int, int, str, int]]:
    """(start, end, perms, file offset) of every mapping of the ring in this process."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == shm_file(name):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end, parts[1], int(parts[2], 16)))
    return sorted(out, key=lambda m: m[3])


def report_a_readers_mappings(name: str) -> list[tuple[int, int, str, int]]:
    with pyseq.Ring.attach(name) as ring:
        reader = ring.reader("maps")
        assert reader.read(timeout=5).payload == b"payload"
        return mappings_of(name)


def test_a_reader_maps_the_header_and_slots_read_only_and_only_the_cursor_table_writable(
        ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=4) as ring:
        ring.publish(1, b"payload")
        writer_maps = mappings_of(ring_name)
        children.start("reader", report_a_readers_mappings, ring_name)
        maps = children.result("reader", timeout=60)
    with open(shm_file(ring_name), "rb") as f:
        cursors_offset, slots_offset, file_length = struct.unpack_from("<QQQ", f.read(56), 32)
    assert [(perms, offset) for _, _, perms, offset in maps] == [
        ("r--s", 0), ("rw-s", cursors_offset), ("r--s", slots_offset)]
    assert [end - start for start, end, _, _ in maps] == [
        cursors_offset, slots_offset - cursors_offset, file_length - slots_offset]
    assert writer_maps and all(perms == "rw-s" for _, _, perms, _ in writer_maps)


def write_into_a_readers_mapping(name: str, part: str) -> str:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the expected SIGSEGV leaves no core file
    ring = pyseq.Ring.attach(name)
    ring.reader("vandal")
    header, cursors, slots = mappings_of(name)
    address = {"header": header[0] + 256, "slots": slots[0], "cursors": cursors[1] - 128}[part]
    ctypes.memset(address, 0x5A, 8)
    return "wrote"


@pytest.mark.parametrize("part", ["header", "slots"])
def test_a_reader_that_writes_into_the_header_or_slots_is_killed_and_the_stream_is_intact(
        ring_name: str, children: Children, part: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=4) as ring:
        reader = ring.reader()
        ring.publish(1, b"intact")
        children.start("vandal", write_into_a_readers_mapping, ring_name, part)
        assert children.join("vandal", timeout=60) == -signal.SIGSEGV
        assert ring.published_sequence == 1
        assert reader.read(timeout=1).payload == b"intact"


def test_a_reader_can_write_the_cursor_table(ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=4):
        children.start("cursor-writer", write_into_a_readers_mapping, ring_name, "cursors")
        assert children.result("cursor-writer", timeout=60) == "wrote"


# ---- closed handles (in a child each: see the module docstring) --------------------------------------


def use_a_closed_handle(name: str, other: str, what: str, op: str) -> str:
    """Close a handle, then call ``op`` on it; say what happened."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    writer = pyseq.Ring.create(name, capacity=8, slot_size=64)
    source = pyseq.Ring.create(other, capacity=8, slot_size=64)
    try:
        src_reader = source.reader()
        source.publish(1, b"to forward")
        src_reader.read(timeout=1)
        attached = pyseq.Ring.attach(name)
        reader = attached.reader("closed")
        for i in range(3):
            writer.publish(1, b"waiting to be read")
        if what == "writer":
            writer.close()
            target: Any = writer
        elif what == "ring":
            attached.close()
            target = reader
        else:
            reader.close()
            target = reader
        calls: dict[str, Callable[[], Any]] = {
            "publish": lambda: target.publish(1, b"x"),
            "try_publish": lambda: target.try_publish(1, b"x"),
            "publish_batch": lambda: target.publish_batch(1, np.zeros((2, 8), dtype=np.uint8)),
            "forward": lambda: target.forward(src_reader),
            "heartbeat": lambda: target.heartbeat(),
            "next_sequence": lambda: target.next_sequence,
            "reader": lambda: target.reader(),
            "published_sequence": lambda: target.published_sequence,
            "readers": lambda: target.readers(),
            "info": lambda: target.info(),
            "poll": lambda: target.poll(),
            "poll_seq": lambda: target.poll_seq(),
            "read": lambda: target.read(timeout=0.05),
            "read_long": lambda: target.read(timeout=0.5),
            "read_seq": lambda: target.read_seq(timeout=0.05),
            "read_batch": lambda: target.read_batch(4),
            "read_batch_long": lambda: target.read_batch(4, timeout=0.5),
            "iterate": lambda: next(iter(target)),
            "skip_to": lambda: target.skip_to(2),
            "last": lambda: target.last,
            "lag": lambda: target.lag,
            "forward_from": lambda: source.forward(target),
        }
        try:
            result = calls[op]()
        except pyseq.PyseqError as e:
            return type(e).__name__
        return f"returned {result!r}"[:120]
    finally:
        source.close()
        writer.close()


WRITER_OPS = ["publish", "try_publish", "publish_batch", "forward", "heartbeat", "next_sequence", "reader",
              "published_sequence", "readers", "info"]
READER_OPS = ["poll", "poll_seq", "read", "read_long", "read_seq", "read_batch", "read_batch_long", "iterate",
              "skip_to", "last", "forward_from"]


@pytest.mark.parametrize("what, op", [("writer", op) for op in WRITER_OPS]
                         + [("ring", op) for op in READER_OPS + ["heartbeat", "lag"]]
                         + [("reader", op) for op in READER_OPS + ["heartbeat"]])
def test_using_a_closed_handle_is_a_ring_closed_error(ring_names: Callable[[], str], children: Children,
                                                      what: str, op: str) -> None:
    children.start("user", use_a_closed_handle, ring_names(), ring_names(), what, op)
    try:
        outcome: Optional[str] = children.result("user", timeout=60)
    except AssertionError as e:
        code = children.join("user")
        raise AssertionError(f"{op} on a closed {what} killed the process (exit code {code}): {e}") from None
    assert outcome == "RingClosedError", f"{op} on a closed {what}: {outcome}"


def test_closing_twice_is_harmless(ring_name: str) -> None:
    ring = pyseq.Ring.create(ring_name, capacity=8, slot_size=64)
    reader = ring.reader()
    reader.close()
    reader.close()
    ring.close()
    ring.close()
    assert ring.closed


# ---- the reader table ----------------------------------------------------------------------------


def test_a_full_reader_table_is_a_reader_table_full_error(ring_name: str) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=2) as ring, \
            pyseq.Ring.attach(ring_name) as attached:
        first = ring.reader("one")
        second = attached.reader("two")
        with pytest.raises(pyseq.ReaderTableFullError, match="2"):
            ring.reader("three")
        with pytest.raises(pyseq.ReaderTableFullError):
            attached.reader("three")
        first.close()
        third = attached.reader("three")
        assert third.name == "three"
        assert sorted(r["name"] for r in ring.readers()) == ["three", "two"]
        assert second.name == "two"


def register_a_reader_and_wait(name: str, ready: Any, release: Any) -> None:
    with pyseq.Ring.attach(name) as ring:
        reader = ring.reader("child")
        ready.set()
        release.wait(60)
        reader.close()


def test_the_cursor_of_a_killed_reader_process_is_reclaimed(ring_name: str, children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=1) as ring:
        ready, release = children.event(), children.event()
        children.start("reader", register_a_reader_and_wait, ring_name, ready, release)
        assert ready.wait(30)
        with pytest.raises(pyseq.ReaderTableFullError):
            ring.reader("parent")
        children.kill("reader")
        reader = ring.reader("parent")
        assert [(r["name"], r["pid"], r["state"]) for r in ring.readers()] == [("parent", os.getpid(), "active")]
        ring.publish(1, b"x")
        assert reader.read(timeout=1).payload == b"x"


def claim_a_cursor_and_wait(name: str, ready: Any, release: Any) -> None:
    """Stop a registration half-way, as a process does between the CAS FREE -> CLAIMED(pid) and
    activating the cursor (ring_layout.h, "Cursor registration"): the entry is taken by a live process."""
    from pyseq._native import lib
    with pyseq.Ring.attach(name) as ring:
        cursors = ring._mapping().cursors
        assert lib.pyseq_cursor_claim(cursors + 0, lib.PYSEQ_CURSOR_FREE, os.getpid())
        ready.set()
        release.wait(60)


def test_a_cursor_another_live_process_is_claiming_is_not_taken_from_it(ring_name: str,
                                                                        children: Children) -> None:
    with pyseq.Ring.create(ring_name, capacity=8, slot_size=64, max_readers=1) as ring:
        ready, release = children.event(), children.event()
        children.start("claimant", claim_a_cursor_and_wait, ring_name, ready, release)
        assert ready.wait(30)
        with pytest.raises(pyseq.ReaderTableFullError):
            ring.reader("thief")
        release.set()
        children.join("claimant")
