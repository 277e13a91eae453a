"""Ping-pong latency between two co-located processes: bench/run.py's latency figures alone.

      CPU a                                         CPU b
    +-------------------------+   channel A -> B   +-------------------------+
    | initiator               | -----------------> | echoer                  |
    |  t0; stamp t0; send     |                    |  m = recv; t = clock()  |
    |  r = recv; rtt = now-t0 | <----------------- |  send(m) back           |
    |  assert r == m          |   channel B -> A   |  one-way = t - t0       |
    +-------------------------+                    +-------------------------+

The channels, the peers, the checks and the output are bench/run.py's (--figures latency,open,
floor); this script only chooses them.  Results go to bench/ (results.json, plots/, RESULTS.md)
unless --out says otherwise.

    python bench/ping_pong_latency.py --quick
    python bench/ping_pong_latency.py --only pyring,pyseq,floor --out /tmp/pingpong
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run.main(["--figures", "latency,open,floor", *sys.argv[1:]]))
