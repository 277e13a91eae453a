"""Plumbing shared by the benches in this folder: peer processes, CPU pinning, deadlines,
shared-memory names, the C floor, HdrHistogram summaries.

Every wait here has a timeout.  run_peers() is the only place peer processes are started,
and it kills every one of them in a finally; a peer that is stuck, dies, or raises makes the
bench fail with a message naming it.  Shared-memory names carry the bench's pid, so
sweep_stale_shm() can remove what a killed earlier run left in /dev/shm.
"""

from __future__ import annotations

import ctypes
import glob
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

# numpy's OpenBLAS starts a helper thread that busy-polls for a while; the benches never call
# BLAS, and on a small machine that thread takes CPU from the processes being measured.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

try:
    import psutil
except ImportError:  # pinning falls back to os.sched_setaffinity
    psutil = None

try:
    from hdrh.histogram import HdrHistogram
except ImportError:
    sys.exit("the benches need the hdrhistogram package: pip install hdrhistogram")

HERE = os.path.dirname(os.path.abspath(__file__))
SHM_DIR = "/dev/shm"
SHM_PREFIX = "pyseq-bench-"
# fork: peers inherit the prepared channels and need not re-import the bench script.
CTX = mp.get_context("fork")

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99))


class Unavailable(Exception):
    """A transport cannot run here (pyseq not importable, no compiler); skipped with a note."""


class BenchFailed(Exception):
    """A peer raised, died, was stuck past its deadline, or a check failed."""


# -- processes ----------------------------------------------------------------------------------


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the finally blocks (kill peers, unlink shm) run."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def usable_cpus() -> list[int]:
    if psutil is not None:
        return sorted(psutil.Process().cpu_affinity())
    return sorted(os.sched_getaffinity(0))


def cpu_pair() -> tuple[int | None, int | None]:
    """Two different CPUs for the two peers, or (None, None) on a one-CPU machine."""
    cpus = usable_cpus()
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def pin(cpu: int | None) -> None:
    if cpu is None:
        return
    if psutil is not None:
        psutil.Process().cpu_affinity([cpu])
    else:
        os.sched_setaffinity(0, {cpu})


def preemptions() -> int:
    """Involuntary context switches of this process so far: a busy-spinning peer pinned to its
    own CPU is only switched out when something else wants that CPU (other load on the machine)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def _peer_main(label, cpu, fn, args, conn) -> None:
    try:
        _die_with_parent()
        pin(cpu)  # before any thread starts (mp.Queue's feeder thread inherits it)
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # report everything, including KeyboardInterrupt
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if not isinstance(exc, (TimeoutError, BenchFailed)):
            detail = traceback.format_exc().rstrip()
        try:
            conn.send(("error", detail))
        except Exception:
            pass
    finally:
        conn.close()


def run_peers(peers, deadline_s: float) -> dict:
    """Run each (label, cpu, fn, args) in its own process; return {label: fn's result}.

    Raises BenchFailed as soon as one peer raises or dies, or when deadline_s passes; every
    peer still alive is then killed (and always, in the finally)."""
    procs, conns = {}, {}
    try:
        for label, cpu, fn, args in peers:
            recv_end, send_end = CTX.Pipe(duplex=False)
            proc = CTX.Process(target=_peer_main, args=(label, cpu, fn, args, send_end),
                               name=f"bench-{label}", daemon=True)
            proc.start()
            send_end.close()
            procs[label], conns[label] = proc, recv_end
        results = {}
        deadline = time.monotonic() + deadline_s
        waiting = dict(conns)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchFailed(f"no result from {', '.join(waiting)} within {deadline_s:.0f} s "
                                  "(peer stuck); killed")
            ready = mp.connection.wait(list(waiting.values()), timeout=min(left, 1.0))
            for label, conn in list(waiting.items()):
                if conn not in ready:
                    continue
                try:
                    status, value = conn.recv()
                except EOFError:
                    procs[label].join(1.0)
                    raise BenchFailed(f"{label} died without a result "
                                      f"(exit code {procs[label].exitcode})") from None
                if status != "ok":
                    raise BenchFailed(f"{label} failed: {value}")
                results[label] = value
                del waiting[label]
        return results
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in procs.values():
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for conn in conns.values():
            conn.close()


# -- shared memory names ------------------------------------------------------------------------


def shm_name(tag: str) -> str:
    return f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-{tag}"


def unlink_shm(*names: str) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass


def unlink_ring_family(ring: str) -> list[str]:
    """Remove pyseq ring ``ring`` and every ring named ``<ring>.<anything>`` (a sequencer's
    inbound rings are ``<ring>.in.<client>``) from /dev/shm; return what was removed."""
    removed = []
    for path in [os.path.join(SHM_DIR, "pyseq." + ring)] + glob.glob(
            os.path.join(SHM_DIR, glob.escape("pyseq." + ring + ".") + "*")):
        try:
            os.unlink(path)
            removed.append(os.path.basename(path))
        except FileNotFoundError:
            pass
    return removed


def sweep_stale_shm() -> list[str]:
    """Remove /dev/shm/[pyseq.]pyseq-bench-<pid>-* objects whose bench process is gone (pyseq
    keeps ring <name> in /dev/shm/pyseq.<name>)."""
    removed = []
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = re.match(r"(?:pyseq\.)?" + re.escape(SHM_PREFIX) + r"(\d+)-", entry)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        unlink_shm(entry)
        removed.append(entry)
    return removed


def start_bench() -> None:
    """What every bench does first: exit cleanly on SIGTERM, and sweep the shared-memory objects a
    killed run left behind (saying so)."""
    exit_on_sigterm()
    stale = sweep_stale_shm()
    if stale:
        print(f"removed {len(stale)} stale shared-memory objects left by killed runs", flush=True)


# -- the C floor --------------------------------------------------------------------------------

FLOOR_SOURCE = os.path.join(HERE, "floor", "cacheline_pingpong.c")


class Floor:
    """bench/floor/cacheline_pingpong.c compiled with gcc -O2 into a temporary directory."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="pyseq-bench-floor-")
        self.binary = None
        self.error = None
        cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            self.error = "no C compiler (gcc) on PATH"
            return
        binary = os.path.join(self.tmp.name, "cacheline_pingpong")
        csrc = os.path.join(os.path.dirname(HERE), "csrc")
        # with pyseq's ring.c compiled in, mode "pyseq" runs pyseq's C path beside the floor
        cmd = [cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-DPYSEQ_RING", "-I", csrc, "-o", binary,
               FLOOR_SOURCE, os.path.join(csrc, "ring.c")]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.error = "compiling the C floor took over 60 s"
            return
        if out.returncode != 0:
            self.error = f"compiling the C floor failed:\n{out.stderr.strip()}"
            return
        self.binary = binary

    def close(self):
        self.tmp.cleanup()

    def run(self, mode, iters, warmup, cpus, timeout_s, want_samples=False):
        """Run one mode; return (key=value dict, raw round-trip ns array or None)."""
        if self.binary is None:
            raise Unavailable(self.error)
        samples = os.path.join(self.tmp.name, f"{mode}.samples") if want_samples else None
        cpu_a, cpu_b = (-1 if c is None else c for c in cpus)
        cmd = [self.binary, mode, str(iters), str(warmup), str(cpu_a), str(cpu_b), str(timeout_s)]
        if samples:
            cmd.append(samples)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its own group: kill it and its child
        try:
            out, err = proc.communicate(timeout=timeout_s * 3 + 30)
        except subprocess.TimeoutExpired:
            raise BenchFailed(f"C floor ({mode}) did not finish in time; killed") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.returncode != 0:
            raise BenchFailed(f"C floor ({mode}) exited {proc.returncode}: {err.strip()}")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if values.get("check") != "ok":
            raise BenchFailed(f"C floor ({mode}) did not report check=ok:\n{out}")
        rtts = np.fromfile(samples, dtype=np.int64) if samples else None
        if rtts is not None and len(rtts) != iters:
            raise BenchFailed(f"C floor ({mode}) wrote {len(rtts)} samples, expected {iters}")
        return values, rtts


# -- histograms and reports ---------------------------------------------------------------------


def latency_histogram(latencies_ns) -> HdrHistogram:
    """HdrHistogram (1 ns .. 60 s, 3 significant digits) of latencies in ns, as given."""
    hist = HdrHistogram(1, 60_000_000_000, 3)
    clipped = np.clip(np.asarray(latencies_ns, dtype=np.int64), 1, 60_000_000_000)
    values, counts = np.unique(clipped, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        hist.record_value(value, count)
    return hist


def one_way_histogram(rtts_ns) -> HdrHistogram:
    """HdrHistogram (1 ns .. 60 s, 3 significant digits) of one-way = round trip / 2."""
    return latency_histogram(np.asarray(rtts_ns, dtype=np.int64) // 2)


def summarize_runs(hists) -> dict:
    """Each percentile (and the max) as the median over runs, with the lowest and highest run:
    {"p50": {"median": .., "min": .., "max": ..}, ...}.  Steadier than one merged histogram when
    other load disturbs some runs and not others."""
    per_run = [summarize(h) for h in hists]
    out = {}
    for key in [name for name, _ in PERCENTILES] + ["max"]:
        values = [r[key] for r in per_run]
        out[key] = {"median": median(values), "min": min(values), "max": max(values)}
    return out


def median(values):
    """The median of a non-empty sequence (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(hist: HdrHistogram) -> dict:
    values = hist.get_percentile_to_value_dict([p for _, p in PERCENTILES])  # one pass over the counts
    out = {name: values[p] for name, p in PERCENTILES}
    out["max"] = hist.get_max_value()
    out["mean"] = round(hist.get_mean_value(), 1)
    out["count"] = hist.get_total_count()
    return out


def fmt_ns(ns: float) -> str:
    if ns < 10_000:
        return f"{ns:,.0f} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:,.1f} us"
    return f"{ns / 1e6:,.1f} ms"


def machine_info(cpus) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pinned_cpus": list(cpus) if cpus[0] is not None else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
        info["cpu_model"] = m.group(1) if m else None
    except OSError:
        pass
    return info
