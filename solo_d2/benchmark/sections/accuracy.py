"""Section ``accuracy`` (not run by default): mask AP against training time of every SOLO head
and Detectron2's Mask R-CNN, trained on the shapes data with the same backbone (ResNet-18-FPN
from scratch), input size, batch, schedule and wall-clock budget
(:mod:`solo_d2.benchmark.accuracy_run`, one process per model, one after the other).

Rows: ``model``, ``curve`` (per evaluation: training seconds, iteration, mask AP, AP50, AP75,
box AP), ``training_seconds``, ``wall_seconds``, ``iterations``, ``loss_ins_below_2.5``.
Also writes ``accuracy.png`` (mask AP against training time) to the output folder.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List

from ..measure import MemoryPlan
from ..registry import register_section
from ..report import fmt, markdown_table
from ..settings import MASK_RCNN, Settings

ACCURACY_MODELS = ("SOLO", "Decoupled_SOLO", "Decoupled_SOLO_Light", "SOLOv2", MASK_RCNN)


def accuracy_table(results: Dict) -> str:
    rows = results["accuracy"]
    budget = results["settings"]["accuracy_budget"]
    return f"**Accuracy at equal training time** ({budget:.0f} s per model, shapes_val)\n\n" + (
        markdown_table(
            ["model", "iterations", "mask AP", "AP50", "AP75", "box AP", "loss_ins < 2.5 at"],
            [
                [
                    r["model"],
                    r["iterations"],
                    fmt(r["curve"][-1]["mask_ap"]),
                    fmt(r["curve"][-1]["ap50"]),
                    fmt(r["curve"][-1]["ap75"]),
                    fmt(r["curve"][-1]["box_ap"]),
                    r["loss_ins_below_2.5"] if r["model"] != MASK_RCNN else "–",
                ]
                for r in rows
            ],
        )
    )


def plot_accuracy(rows: List[Dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        curve = row["curve"]
        ax.plot(
            [0] + [p["seconds"] for p in curve],
            [0] + [p["mask_ap"] for p in curve],
            marker="o",
            label=row["model"],
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("shapes_val mask AP")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@register_section("accuracy", order=60, table=accuracy_table, default=False)
def bench_accuracy(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    rows = []
    for model in ACCURACY_MODELS:
        output = os.path.join(settings.output, "accuracy", model)
        command = [sys.executable, "-m", "solo_d2.benchmark.accuracy_run", "--model", model]
        command += ["--budget", str(settings.accuracy_budget), "--output", output]
        command += ["--evaluations", str(settings.accuracy_evaluations)]
        command += ["--threads", str(settings.threads), "MODEL.DEVICE", settings.device]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(output, "curve.json")) as f:
            rows.append(json.load(f))
        print(f"  {model}: {rows[-1]['curve'][-1]}", flush=True)
    os.makedirs(settings.output, exist_ok=True)
    plot_accuracy(rows, os.path.join(settings.output, "accuracy.png"))
    return rows
