"""Sections ``maskhead`` and ``train``: training steps (forward, backward, SGD step).

* ``maskhead``: SOLO R50-FPN, positive-only mask loss (solo_d2) vs the original all-channel
  loss (:class:`~benchmarks.cases.AllChannelSOLO`), identical weights, batch
  ``MASKHEAD_BATCH``.
* ``train``: the models of ``--models`` at each batch size of ``settings.train_batches``.

Rows: ``model``, ``batch``, ``ms``, ``times``, ``peak_mb`` / ``base_mb``.
"""

import gc
from typing import Dict, List, Sequence

from detectron2.utils.events import EventStorage

from ..cases import model_inputs, prepare_train, train_step
from ..measure import MemoryPlan, alternate
from ..registry import MemoryCase, register_memory_case, register_section
from ..report import find_row, fmt, markdown_table, ratio
from ..settings import ALL_CHANNEL, LABELS, MASK_RCNN, MASKHEAD_BATCH, Settings


def _train_rows(settings: Settings, names: Sequence[str], batches: Sequence[int], memory):
    """Time training steps of ``names`` (alternating), for each batch size."""
    prepared = {name: prepare_train(settings, name, 1)[:2] for name in names}
    if ALL_CHANNEL in prepared and "SOLO" in prepared:  # identical weights
        prepared[ALL_CHANNEL][0].load_state_dict(prepared["SOLO"][0].state_dict())
    rows = []
    with EventStorage(0):
        for batch in batches:
            inputs = model_inputs(settings, batch, training=True)
            times = alternate(
                {n: (lambda m=m, o=o: train_step(m, o, inputs)) for n, (m, o) in prepared.items()},
                settings.warmup,
                settings.repeats,
                settings.device,
            )
            for name in names:
                row = {"model": name, "batch": batch, "ms": times[name]["ms"], "times": times[name]}
                memory.request(row, kind="train", model=name, batch=batch)
                rows.append(row)
                print(f"  train {name} batch {batch}: {times[name]['ms']:.0f} ms", flush=True)
    del prepared
    gc.collect()
    return rows


def maskhead_table(results: Dict) -> str:
    rows, base = results["maskhead"], find_row(results["maskhead"], model="SOLO")
    return (
        f"**Mask head** (SOLO R50-FPN training step, batch {MASKHEAD_BATCH})\n\n"
        + markdown_table(
            ["variant", "ms / step", "vs positive-only", "peak MB", "vs positive-only"],
            [
                [
                    "positive-only (solo_d2)" if r["model"] == "SOLO" else "all-channel (original)",
                    fmt(r["ms"], ".0f"),
                    fmt(ratio(r, base, "ms"), ".2f"),
                    fmt(r["peak_mb"], ".0f"),
                    fmt(ratio(r, base, "peak_mb"), ".2f"),
                ]
                for r in rows
            ],
        )
    )


def train_table(results: Dict) -> str:
    size = "x".join(map(str, results["settings"]["train_size"]))
    rows = results["train"]

    def vs_rcnn(r, key):
        return fmt(ratio(r, find_row(rows, model=MASK_RCNN, batch=r["batch"]), key), ".2f")

    return f"**Training step** (forward + backward + SGD, {size} images)\n\n" + markdown_table(
        ["model", "batch", "ms / step", "vs Mask R-CNN", "peak MB", "vs Mask R-CNN"],
        [
            [
                LABELS[r["model"]],
                r["batch"],
                fmt(r["ms"], ".0f"),
                vs_rcnn(r, "ms"),
                fmt(r["peak_mb"], ".0f"),
                vs_rcnn(r, "peak_mb"),
            ]
            for r in rows
        ],
    )


@register_section("maskhead", order=20, table=maskhead_table)
def bench_maskhead(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    return _train_rows(settings, ["SOLO", ALL_CHANNEL], [MASKHEAD_BATCH], memory)


@register_section("train", order=30, table=train_table)
def bench_train(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    return _train_rows(settings, list(settings.models), settings.train_batches, memory)


@register_memory_case("train")
def train_case(settings: Settings, case: Dict) -> MemoryCase:
    """``{"kind": "train", "model": NAME, "batch": B}``: one training step."""
    model, optimizer, inputs = prepare_train(settings, case["model"], case["batch"])
    return MemoryCase(lambda: train_step(model, optimizer, inputs))
