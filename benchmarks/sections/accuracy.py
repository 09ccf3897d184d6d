"""Sections ``accuracy`` and ``accuracy-sweep`` (not run by default): mask AP against wall-clock
time of SOLOv2 and Detectron2's Mask R-CNN trained from scratch on two embedded cases with the
same backbone (ResNet-18-FPN), input size, batch, schedule shape, mixed precision and budget
(:mod:`benchmarks.accuracy_run`, one process per model, one after the other).

* ``accuracy``: per case (:data:`~benchmarks.accuracy_run.CASES`), SOLOv2, Mask R-CNN with its
  model-zoo settings, and Mask R-CNN with the settings the sweep found best for that case
  (:data:`TUNED_MASK_RCNN`); ``--models`` adds the other SOLO heads on the ``shapes`` case.
* ``accuracy-sweep``: the tuning of Mask R-CNN, at half the budget and evaluated at the end
  only: ROIs sampled per image (64, 128, 256; the model zoo samples 512) with anchors sized for
  these images, then, with the best ROI count, SGD and AdamW at other learning rates, and
  AdamW at a batch of 2 (four times the iterations per second) at three learning rates, then
  the best of those without the quick configs' quarter turns of the training images.

Rows: ``model`` (label), ``case``, ``opts``, ``curve`` (per evaluation: wall seconds since the
trainer was created, iteration, mask AP, AP50, AP75, box AP), ``wall_seconds``,
``iterations``, ``seconds_per_iteration``. ``accuracy`` also writes ``accuracy.png`` (mask AP
against time, one panel per case).
"""

import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence, Tuple

from ..measure import MemoryPlan
from ..registry import register_section
from ..report import fmt, markdown_table
from ..settings import MASK_RCNN, REPO, Settings

#: The cases of both sections.
ACCURACY_CASES = ("shapes", "shapes_dense")
#: Anchors for 256 px images: the model zoo's (32..512 px on P2..P6, made for 800 px images)
#: scaled by 1/4, as SOLO's scale ranges are scaled for these images (smallest 8 px).
SMALL_ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]"]
#: Mask R-CNN's best settings per case from ``accuracy-sweep`` and the lr search of
#: docs/BENCHMARKS.md (sixth round): small anchors, AdamW at lr 1.4e-3 with batch 2 (4x the
#: iterations of batch 8 per second; on shapes_dense 67.3 mask AP at 480 s against 62.9 at
#: 7e-4 and 66.0 at 2.8e-3; on shapes 15.4 against 8.8 at 7e-4 on another day), and 128
#: (shapes: 12.8 mask AP at 240 s; 64: 10.2) or 64 ROIs per image (shapes_dense: 71.4).
_BATCH_2 = ["SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", "0.0014", "SOLVER.IMS_PER_BATCH", "2"]
#: On shapes_dense the quick configs' quarter turns of the training images neither help nor hurt
#: the peer (65.7-68.4, mean 67.4 over five runs, without; 66.8 and 68.0 with: docs/BENCHMARKS.md,
#: ninth round), so its tuned setting keeps the data it was tuned on.
#: The compared models share the case's INPUT settings unless an option changes them.
NO_ROTATIONS = ["INPUT.RANDOM_ROTATION_ANGLES", "[]"]
TUNED_MASK_RCNN = {
    "shapes": SMALL_ANCHORS + ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"] + _BATCH_2,
    "shapes_dense": SMALL_ANCHORS
    + ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"]
    + _BATCH_2
    + NO_ROTATIONS,
}
SWEEP_ROIS = (64, 128, 256)
#: With the best ROI count: (optimizer, lr, batch). The cases' own recipes: AdamW 3e-3 at
#: batch 8 (shapes) and batch 2 (shapes_dense).
SWEEP_SOLVERS = (
    ("SGD", "0.01", "8"),
    ("SGD", "0.02", "8"),
    ("AdamW", "0.0028", "8"),
    ("AdamW", "0.0007", "2"),  # 4x the iterations per second
    ("AdamW", "0.0014", "2"),
    ("AdamW", "0.0028", "2"),
)
SOLO_HEADS = ("SOLO", "Decoupled_SOLO", "Decoupled_SOLO_Light")


def _label(model: str, opts: Sequence[str]) -> str:
    if model != MASK_RCNN:
        return model
    if not opts:
        return "Mask R-CNN (model zoo)"
    settings = dict(zip(opts[::2], opts[1::2]))
    parts = [f"{settings.get('MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE', 512)} ROIs"]
    if "MODEL.ANCHOR_GENERATOR.SIZES" in settings:
        parts.append("small anchors")
    if "SOLVER.OPTIMIZER" in settings:
        parts.append(f"{settings['SOLVER.OPTIMIZER']} lr {settings['SOLVER.BASE_LR']}")
    if "SOLVER.IMS_PER_BATCH" in settings:
        parts.append(f"batch {settings['SOLVER.IMS_PER_BATCH']}")
    if settings.get("INPUT.RANDOM_ROTATION_ANGLES") == "[]":
        parts.append("no rotations")
    return "Mask R-CNN (" + ", ".join(parts) + ")"


def run_model(
    settings: Settings, case: str, model: str, opts: Sequence[str], budget: float, name, evals=None
):
    """One :mod:`benchmarks.accuracy_run` process; returns its row."""
    output = os.path.join(settings.output, "accuracy", case, name)
    command = [sys.executable, "-m", "benchmarks.accuracy_run", "--model", model, "--case", case]
    command += ["--budget", str(budget), "--output", output]
    command += ["--evaluations", str(evals or settings.accuracy_evaluations)]
    command += ["--threads", str(settings.threads), "MODEL.DEVICE", settings.device, *opts]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    with open(os.path.join(output, "curve.json")) as f:
        row = json.load(f)
    row["model"] = _label(model, opts)
    print(f"  {case} {row['model']}: {row['curve'][-1]}", flush=True)
    return row


def accuracy_table(results: Dict, key: str = "accuracy") -> str:
    rows = results[key]
    budget = rows[0]["budget"] if rows else results["settings"]["accuracy_budget"]
    title = "Accuracy at equal wall-clock time" if key == "accuracy" else "Mask R-CNN sweep"
    return f"**{title}** ({budget:.0f} s per model, evaluations included)\n\n" + markdown_table(
        ["case", "model", "iterations", "s / it", "mask AP", "AP50", "AP75", "box AP", "curve"],
        [
            [
                r["case"],
                r["model"],
                r["iterations"],
                fmt(r["seconds_per_iteration"], ".2f"),
                fmt(r["curve"][-1]["mask_ap"]),
                fmt(r["curve"][-1]["ap50"]),
                fmt(r["curve"][-1]["ap75"]),
                fmt(r["curve"][-1]["box_ap"]),
                " / ".join(f"{p['mask_ap']:.1f}" for p in r["curve"]),
            ]
            for r in rows
        ],
    )


def plot_accuracy(rows: List[Dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in ACCURACY_CASES if any(r["case"] == c for r in rows)]
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for row in (r for r in rows if r["case"] == case):
            curve = row["curve"]
            ax.plot(
                [0] + [p["seconds"] for p in curve],
                [0] + [p["mask_ap"] for p in curve],
                marker="o",
                label=row["model"],
            )
        ax.set_title(f"{case}_val")
        ax.set_xlabel("wall-clock seconds (evaluations included)")
        ax.set_ylabel("mask AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _entries(settings: Settings, case: str) -> List[Tuple[str, List[str], str]]:
    """(model, opts, output name) of the ``accuracy`` section for ``case``."""
    entries = [("SOLOv2", [], "SOLOv2")]
    if case == "shapes":
        entries += [(m, [], m) for m in SOLO_HEADS if m in settings.models]
    entries += [(MASK_RCNN, [], "MaskRCNN_zoo"), (MASK_RCNN, TUNED_MASK_RCNN[case], "MaskRCNN")]
    return entries


@register_section(
    "accuracy", order=60, table=lambda r: accuracy_table(r, "accuracy"), default=False
)
def bench_accuracy(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    rows = [
        run_model(settings, case, model, opts, settings.accuracy_budget, name)
        for case in ACCURACY_CASES
        for model, opts, name in _entries(settings, case)
    ]
    os.makedirs(settings.output, exist_ok=True)
    plot_accuracy(rows, os.path.join(settings.output, "accuracy.png"))
    return rows


@register_section(
    "accuracy-sweep", order=61, table=lambda r: accuracy_table(r, "accuracy-sweep"), default=False
)
def bench_accuracy_sweep(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    budget = settings.accuracy_budget / 2
    rows = []
    for case in ACCURACY_CASES:
        by_rois = []
        for rois in SWEEP_ROIS:
            opts = SMALL_ANCHORS + ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(rois)]
            row = run_model(settings, case, MASK_RCNN, opts, budget, f"sweep_{rois}", evals=1)
            by_rois.append((row, opts))
        rows += [row for row, _ in by_rois]
        _, best = max(by_rois, key=lambda item: item[0]["curve"][-1]["mask_ap"])
        by_solver = []
        for optimizer, lr, batch in SWEEP_SOLVERS:
            opts = best + ["SOLVER.OPTIMIZER", optimizer, "SOLVER.BASE_LR", lr]
            opts += ["SOLVER.IMS_PER_BATCH", batch]
            name = f"sweep_{optimizer}_{lr}_{batch}"
            row = run_model(settings, case, MASK_RCNN, opts, budget, name, evals=1)
            by_solver.append((row, opts))
        rows += [row for row, _ in by_solver]
        _, best_solver = max(by_solver, key=lambda item: item[0]["curve"][-1]["mask_ap"])
        # the case's data augmentation is SOLO's choice: the peer also trains without it
        opts = best_solver + NO_ROTATIONS
        rows.append(run_model(settings, case, MASK_RCNN, opts, budget, "sweep_no_rot", evals=1))
    return rows
