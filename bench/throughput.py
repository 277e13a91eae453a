"""Throughput from one writer process to one reader process: bench/run.py's throughput figures.

      CPU a                                         CPU b
    +-------------------------+    one channel     +---------------------------+
    | writer                  | -----------------> | reader                    |
    |  warm-up, then t0       |                    |  checks every message:    |
    |  send(index i . pattern)|                    |  index, order, every byte |
    +-------------------------+                    +---------------------------+
        msgs/s = N / (reader's last message - t0), one clock (CLOCK_MONOTONIC)

The transports, peers and checks are bench/run.py's (--figures throughput,readers,capacity);
this script only chooses them.  The messages (message, batch_records, PATTERN) live in
bench/transports.py and are re-exported here for the benches that import them from this name.

    python bench/throughput.py --quick
    python bench/throughput.py --only pyring,pyseq,pyseq-batch --out /tmp/throughput
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402
from transports import MESSAGE_LENGTH, MSG_TYPE, PATTERN, batch_records, message  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(run.main(["--figures", "throughput,readers,capacity", *sys.argv[1:]]))
