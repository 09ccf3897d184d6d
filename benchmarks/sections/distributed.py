"""Section ``distributed`` (not run by default): training throughput of SOLO on the shapes data
with 1 and 2 processes on this machine (``train_net.py --num-gpus N``: CUDA processes with
NCCL, else CPU processes with gloo), the same global batch.

Rows: ``processes``, ``seconds_per_iteration``, ``images_per_second``, ``iterations``.
"""

import os
import re
import subprocess
import sys
from typing import Dict, List

from ..measure import MemoryPlan
from ..registry import register_section
from ..report import fmt, markdown_table
from ..settings import REPO, Settings

BATCH = 4
SPEED = re.compile(r"Overall training speed: (\d+) iterations in .* \(([0-9.]+) s / it\)")


def distributed_table(results: Dict) -> str:
    rows = results["distributed"]
    return f"**Training throughput** (SOLO shapes quick config, global batch {BATCH})\n\n" + (
        markdown_table(
            ["processes", "s / iteration", "images / s"],
            [
                [
                    r["processes"],
                    fmt(r["seconds_per_iteration"], ".3f"),
                    fmt(r["images_per_second"], ".2f"),
                ]
                for r in rows
            ],
        )
    )


@register_section("distributed", order=70, table=distributed_table, default=False)
def bench_distributed(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    iterations = 20 if settings.quick else 100
    rows = []
    for processes in (1, 2):
        output = os.path.join(settings.output, "distributed", str(processes))
        log = subprocess.run(
            [sys.executable, "train_net.py", "--config-file", "configs/SOLO_shapes_quick.yaml"]
            + ["--num-gpus", str(processes), "DATASETS.TEST", "()", "OUTPUT_DIR", output]
            + ["SOLVER.MAX_ITER", str(iterations), "SOLVER.IMS_PER_BATCH", str(BATCH)]
            + ["MODEL.DEVICE", settings.device],
            cwd=REPO,
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ).stdout
        timed, seconds = SPEED.findall(log)[-1]
        rows.append(
            {
                "processes": processes,
                "iterations": int(timed),
                "seconds_per_iteration": float(seconds),
                "images_per_second": BATCH / float(seconds),
            }
        )
        print(f"  {processes} process(es): {rows[-1]}", flush=True)
    return rows
