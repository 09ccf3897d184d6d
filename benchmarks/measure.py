"""Measuring: alternating timing in one process, peak memory in fresh subprocesses.

Each comparison times its variants in turns (:func:`alternate`): warm-up, then the median of
several rounds. Peak memory of every configuration is measured after all timing, one fresh
subprocess per distinct case (:class:`MemoryPlan`): max RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA (:func:`measure_memory_case`).
"""

import contextlib
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Sequence

import torch

from detectron2.utils.events import EventStorage

from .registry import build_memory_case
from .settings import Settings

__all__ = [
    "synchronize",
    "alternate",
    "peak_mb",
    "measure_memory_case",
    "memory_in_subprocess",
    "MemoryPlan",
]


def synchronize(device: str):
    """Wait for the queued CUDA work (no-op on CPU), so that timings cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(fns: Dict[str, Callable], warmup: int, repeats: int, device: str) -> Dict[str, Dict]:
    """Time the functions in turns (warm-up rounds, then ``repeats`` rounds, rotating the order).

    Returns per name the median and all times in ms.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(1000 * (time.perf_counter() - start))
    return {
        n: {"ms": statistics.median(t), "all_ms": [round(x, 2) for x in t]}
        for n, t in times.items()
    }


def peak_mb(device: str) -> float:
    """Peak memory of this process so far in MiB: max RSS on CPU, allocated tensors on CUDA."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_memory_case(settings: Settings, case: Dict) -> Dict:
    """Peak memory of one configuration, run in this (fresh) process: warm-up + one step.

    ``case``: ``{"kind": KIND, ...}``, built by the builder registered for KIND
    (:func:`~benchmarks.registry.register_memory_case`). ``base_mb``: memory once the
    model and inputs exist (CPU: max RSS so far, including the interpreter and libraries; CUDA:
    allocated tensors); ``peak_mb``: the peak after the steps; ``vm_hwm_mb`` (Linux): the
    kernel's VmHWM, a cross-check of the CPU peak.
    """
    device = settings.device
    built = build_memory_case(settings, case)
    gc.collect()
    if device.startswith("cuda"):
        synchronize(device)
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = peak_mb(device)
    if built.prepare is not None:
        built.prepare()
    with EventStorage(0):
        for _ in range(2):
            built.step()
    synchronize(device)
    result = {"base_mb": round(base, 1), "peak_mb": round(peak_mb(device), 1)}
    with contextlib.suppress(OSError, StopIteration):  # cross-check: the kernel's VmHWM
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        result["vm_hwm_mb"] = round(int(hwm.split()[1]) / 1024, 1)
    return result


# Linux charges a new process's max RSS with the resident size of the process that exec'ed it,
# so measurement processes are started from this small launcher, not from the (large) benchmark.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def memory_in_subprocess(settings: Settings, case: Dict, command: Sequence[str]) -> Dict:
    """Run :func:`measure_memory_case` in a fresh interpreter (same device and threads).

    ``command``: the command line of the benchmark CLI, which is run with
    ``--measure-memory CASE --device D --threads N [--quick]`` and prints the result as its
    last line of JSON. A failed case gives ``base_mb`` and ``peak_mb`` None.
    """
    command = [
        *command,
        "--measure-memory",
        json.dumps(case),
        "--device",
        settings.device,
        "--threads",
        str(settings.threads),
    ] + (["--quick"] if settings.quick else [])
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  memory case {case} failed: {' | '.join(tail)}", flush=True)
        return {"base_mb": None, "peak_mb": None}
    return json.loads(lines[-1])


class MemoryPlan:
    """Memory cases requested by the sections, measured after all timing (one subprocess per
    distinct case, ``jobs`` at a time, through ``command``: see :func:`memory_in_subprocess`)
    and written into the requesting rows."""

    def __init__(self, settings: Settings, command: Sequence[str], jobs: int = 1):
        self.settings, self.command, self.jobs = settings, list(command), jobs
        self.requests: List = []

    def request(self, row: Dict, prefix: str = "", **case):
        """Fill ``row[prefix + "base_mb"]`` / ``row[prefix + "peak_mb"]`` with the memory of
        ``case`` when :meth:`run` is called (None until then, and without ``settings.memory``)."""
        row[prefix + "base_mb"] = row[prefix + "peak_mb"] = None
        if self.settings.memory:
            self.requests.append((row, prefix, case))

    def run(self):
        """Measure every distinct requested case and fill the rows."""
        cases = {json.dumps(c, sort_keys=True): c for _, _, c in self.requests}
        if not cases:
            return
        print(
            f"[memory] {len(cases)} cases in fresh subprocesses, {self.jobs} at a time", flush=True
        )

        def measure(key):
            start = time.perf_counter()
            result = memory_in_subprocess(self.settings, cases[key], self.command)
            print(f"  {cases[key]}: {result} ({time.perf_counter() - start:.0f} s)", flush=True)
            return key, result

        with ThreadPoolExecutor(self.jobs) as pool:
            measured = dict(pool.map(measure, list(cases)))
        for row, prefix, case in self.requests:
            result = measured[json.dumps(case, sort_keys=True)]
            row[prefix + "base_mb"], row[prefix + "peak_mb"] = result["base_mb"], result["peak_mb"]
