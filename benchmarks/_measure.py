"""Measurement helpers shared by the benchmark scripts (run as scripts: imported from their folder).

Every benchmark runs each measurement in a fresh subprocess so that its peak RSS is its own; the
worker prints one JSON line, read back by :func:`run_json_worker`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, or of a child if larger.

    METIS runs in a forked child process (``hardbatch.structure.partition``); the child shares
    the parent's pages, so its peak RSS counts them and the larger of the two peaks is the
    memory the plan needed."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024  # KiB on Linux


def gib(b: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{b / 2**30:.2f}"


def run_json_worker(cmd: list[str], threads: int) -> dict:
    """Run a worker command with ``threads`` BLAS/OpenMP threads; return its last JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_description(threads: int) -> str:
    """CPU model, cores, torch version and thread count, for the header of a result table."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({threads} thread{'s' if threads > 1 else ''}), Python {platform.python_version()}"
    )
