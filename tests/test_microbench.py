"""Microbenchmarks of the hot calls (pytest-benchmark), skipped in the normal test run.

Run them with::

    python -m pytest tests/test_microbench.py --benchmark-enable --benchmark-only

Each benchmark also asserts what the call returned, so a broken call cannot look fast.  Numbers
are per call; the machine is shared and noisy, so compare runs side by side (``--benchmark-compare``),
never against an absolute figure.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import pytest

import pyseq
from pyseq.journal import crc32c
from pyseq.refdata import AddInstrument

CAPACITY = 1 << 16
PAYLOAD = bytes(range(64))


@pytest.fixture
def ring(ring_name: str) -> Iterator[pyseq.Ring]:
    r = pyseq.Ring.create(ring_name, CAPACITY, 128, idle=pyseq.BackoffIdle())
    try:
        yield r
    finally:
        r.close()


def test_publish_64_bytes(benchmark: Any, ring: pyseq.Ring) -> None:
    seq = benchmark(ring.publish, 7, PAYLOAD)
    assert seq == ring.published_sequence >= 1


def test_poll_a_published_message(benchmark: Any, ring: pyseq.Ring) -> None:
    reader = ring.reader("bench")

    def publish_then_poll() -> Any:
        ring.publish(7, PAYLOAD)
        return reader.poll()

    msg = benchmark(publish_then_poll)
    assert msg is not None and msg.payload == PAYLOAD and reader.poll() is None


def test_poll_when_empty(benchmark: Any, ring: pyseq.Ring) -> None:
    reader = ring.reader("bench", start="latest")
    assert benchmark(reader.poll) is None


def test_read_batch_of_1024(benchmark: Any, ring: pyseq.Ring) -> None:
    reader = ring.reader("bench")
    records = np.frombuffer(PAYLOAD * 1024, dtype=np.uint8).reshape(1024, 64)
    out = np.empty(1024, dtype=ring.dtype)

    def publish_then_read() -> np.ndarray:
        ring.publish_batch(7, records)
        return reader.read_batch(1024, timeout=0, out=out)

    batch = benchmark(publish_then_read)
    assert len(batch) == 1024 and bytes(batch[0]["payload"][:64]) == PAYLOAD


def test_record_encode(benchmark: Any) -> None:
    rec = AddInstrument(symbol="AAPL", tick_size=0.01, lot_size=1, currency="USD")
    raw = benchmark(rec.encode)
    assert AddInstrument.decode(raw) == rec


def test_record_decode(benchmark: Any) -> None:
    rec = AddInstrument(symbol="AAPL", tick_size=0.01, lot_size=1, currency="USD")
    assert benchmark(AddInstrument.decode, rec.encode()) == rec


@pytest.mark.parametrize("size", [64, 4096, 1 << 20])
def test_crc32c(benchmark: Any, size: int) -> None:
    data = os.urandom(size)
    value = benchmark(crc32c, data)
    assert value == crc32c(data[size // 2:], crc32c(data[:size // 2]))  # and it continues correctly
