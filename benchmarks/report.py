"""Reporting: machine description, the checks of the issue's targets, the Markdown tables
(bench.md) and the summary figure (benchmarks.png).

``results`` below is the dict written to bench.json: ``machine`` (:func:`machine_info`),
``settings`` (``asdict(Settings)``), one list of rows per section that ran, and ``checks``.
"""

import contextlib
import os
import platform
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .registry import registered_sections
from .settings import ALL_CHANNEL, LABELS, MASK_RCNN, MASKHEAD_BATCH, MODELS, Settings

__all__ = [
    "machine_info",
    "Check",
    "evaluate_checks",
    "find_row",
    "ratio",
    "fmt",
    "markdown_table",
    "render_tables",
    "plot",
]


def machine_info(settings: Settings) -> Dict:
    """CPU model, core count, versions, threads and device (and GPU name on CUDA)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": settings.device,
    }
    if settings.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


@dataclass
class Check:
    """A measured ratio against its required limit; ``passed`` None when not measured."""

    name: str
    value: Optional[float]
    limit: float
    lower_is_better: bool
    unit: str = "x"
    passed: Optional[bool] = field(init=False)

    def __post_init__(self):
        if self.value is None:
            self.passed = None
        elif self.lower_is_better:
            self.passed = self.value <= self.limit
        else:
            self.passed = self.value >= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


def find_row(rows: Sequence[Dict], **keys) -> Optional[Dict]:
    """The first row with all the given key values, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def ratio(a: Optional[Dict], b: Optional[Dict], key: str) -> Optional[float]:
    """``a[key] / b[key]``, or None when a row or a value is missing."""
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return None
    return a[key] / b[key]


def evaluate_checks(results: Dict) -> List[Check]:
    """The four targets of the issue."""
    targets, train, infer = (results.get(k, []) for k in ("targets", "train", "infer"))
    at20 = find_row(targets, instances=20)
    rcnn = find_row(infer, model=MASK_RCNN)
    rcnn_train = find_row(train, model=MASK_RCNN, batch=2)
    return [
        Check(
            "target builder speed-up over the dense baseline, 20 instances",
            at20["speedup"] if at20 else None,
            20.0,
            lower_is_better=False,
        ),
        Check(
            "SOLO R50 inference latency / Mask R-CNN",
            ratio(find_row(infer, model="SOLO"), rcnn, "ms"),
            1.0,
            lower_is_better=True,
        ),
        Check(
            "SOLOv2 R50 inference latency / Mask R-CNN",
            ratio(find_row(infer, model="SOLOv2"), rcnn, "ms"),
            0.8,
            lower_is_better=True,
        ),
        Check(
            "SOLO R50 training peak memory / Mask R-CNN, batch 2",
            ratio(find_row(train, model="SOLO", batch=2), rcnn_train, "peak_mb"),
            1.0,
            lower_is_better=True,
        ),
    ]


def fmt(value: Optional[float], spec: str = ".1f") -> str:
    """``value`` formatted with ``spec``, or an en dash when missing."""
    return "–" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table of ``rows`` (one cell per header column, converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_tables(results: Dict) -> str:
    """The results as Markdown (printed, written to bench.md, quoted in the docs): the set-up,
    the table of every section that ran (in run order), then the checks."""
    info, parts = results["machine"], []
    parts.append(
        f"Device {info['device']} ({info.get('gpu', info['cpu'])}), {info['cores']} cores, "
        f"torch {info['torch']}, torch.set_num_threads({info['threads']}) for every model; "
        f"warm-up {results['settings']['warmup']}, median of {results['settings']['repeats']} "
        f"(targets: {results['settings']['target_repeats']}) alternating repeats."
    )
    for name, section in registered_sections().items():
        if section.table is not None and results.get(name):
            parts.append(section.table(results))
    parts.append(
        "**Targets**\n\n"
        + markdown_table(
            ["target", "measured", "required", "result"],
            [
                [
                    c["name"],
                    fmt(c["value"], ".2f") + "x" if c["value"] is not None else "–",
                    ("<= " if c["lower_is_better"] else ">= ") + f"{c['limit']:g}x",
                    c["verdict"],
                ]
                for c in results["checks"]
            ],
        )
    )
    return "\n\n".join(parts) + "\n"


def plot(results: Dict, path: str):
    """A 2 x 3 summary figure of the built-in sections (matplotlib, Agg backend), to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    (ax_tgt, ax_head, ax_train), (ax_infer, ax_tmem, ax_imem) = axes
    colors = {
        "SOLO": "C0",
        "DecoupledSOLO": "C1",
        "SOLOv2": "C2",
        MASK_RCNN: "C3",
        ALL_CHANNEL: "C4",
    }

    rows = results.get("targets", [])
    if rows:
        counts = [r["instances"] for r in rows]
        ax_tgt.plot(counts, [r["dense_ms"] for r in rows], "o-", color="C3", label="dense baseline")
        ax_tgt.plot(counts, [r["solo_d2_ms"] for r in rows], "o-", color="C0", label="solo_d2")
        for r in rows:
            ax_tgt.annotate(
                f"{r['speedup']:.0f}x",
                (r["instances"], r["solo_d2_ms"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
            )
        ax_tgt.set_yscale("log")
        ax_tgt.set_xlabel("instances per image")
        ax_tgt.set_ylabel("ms / image")
        ax_tgt.legend()
    ax_tgt.set_title("target builder")

    def annotated_bars(ax, labels, rows, notes):
        """One bar per row (its ms), each with a note above it."""
        ax.bar(labels, [r["ms"] for r in rows], color=[colors[r["model"]] for r in rows])
        for i, (r, note) in enumerate(zip(rows, notes)):
            ax.annotate(note, (i, r["ms"]), textcoords="offset points", xytext=(0, 4), ha="center")

    rows = results.get("maskhead", [])
    if rows:
        labels = ["positive-only" if r["model"] == "SOLO" else "all-channel" for r in rows]
        notes = [f"{fmt(r['peak_mb'], '.0f')} MB peak" for r in rows]
        annotated_bars(ax_head, labels, rows, notes)
        ax_head.set_ylabel("ms / training step")
    ax_head.set_title(f"SOLO mask loss, batch {MASKHEAD_BATCH}")

    def grouped(ax, rows, key, ylabel, title):
        batches = sorted({r["batch"] for r in rows})
        names = [n for n in MODELS if any(r["model"] == n for r in rows)]
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            values = [(find_row(rows, model=name, batch=b) or {}).get(key) or 0 for b in batches]
            ax.bar(
                np.arange(len(batches)) + k * width,
                values,
                width,
                label=LABELS[name],
                color=colors[name],
            )
        ax.set_xticks(np.arange(len(batches)) + 0.4 - width / 2)
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)

    rows = results.get("train", [])
    if rows:
        grouped(ax_train, rows, "ms", "ms / training step", "training step")
        grouped(ax_tmem, rows, "peak_mb", "peak MB", "training peak memory")

    rows = results.get("infer", [])
    if rows:
        labels = [LABELS[r["model"]].replace(" R50", "\nR50") for r in rows]
        annotated_bars(ax_infer, labels, rows, [f"{r['instances']} inst." for r in rows])
        ax_infer.set_ylabel("ms / image")
        ax_imem.bar(
            labels, [r["peak_mb"] or 0 for r in rows], color=[colors[r["model"]] for r in rows]
        )
        ax_imem.set_ylabel("peak MB")
    ax_infer.set_title("inference latency")
    ax_imem.set_title("inference peak memory")
    info = results["machine"]
    fig.suptitle(
        f"solo_d2 benchmarks: {info['device']} ({info.get('gpu', info['cpu'])}), "
        f"{info['threads']} threads, torch {info['torch']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
