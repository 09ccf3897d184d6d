"""Section ``targets``: ``build_solo_targets`` vs the dense per-object baseline
(:mod:`benchmarks.dense_baseline`) on one padded image with random instances.

Both builders are checked to give identical targets before timing. Rows: ``instances``,
``positive_cells``, ``dense_ms``, ``solo_d2_ms``, ``speedup``, ``times`` and the peak memory of
both (``dense_peak_mb``, ``solo_d2_peak_mb``, with their ``*_base_mb``).
"""

from typing import Dict, List

from solo_d2.modeling.targets import build_solo_targets

from ..cases import target_inputs
from ..dense_baseline import assert_same_targets, build_dense_targets
from ..measure import MemoryPlan, alternate
from ..registry import MemoryCase, register_memory_case, register_section
from ..report import fmt, markdown_table
from ..settings import Settings


def targets_table(results: Dict) -> str:
    size = "x".join(map(str, results["settings"]["target_size"]))
    return f"**Target builder** (one padded {size} image, SOLO R50 grids)\n\n" + markdown_table(
        [
            "instances",
            "positive cells",
            "dense baseline ms",
            "solo_d2 ms",
            "speed-up",
            "dense peak MB",
            "solo_d2 peak MB",
        ],
        [
            [
                r["instances"],
                r["positive_cells"],
                fmt(r["dense_ms"]),
                fmt(r["solo_d2_ms"], ".2f"),
                f"{r['speedup']:.1f}x",
                fmt(r["dense_peak_mb"], ".0f"),
                fmt(r["solo_d2_peak_mb"], ".0f"),
            ]
            for r in results["targets"]
        ],
    )


@register_section("targets", order=10, table=targets_table)
def bench_targets(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    """One row per instance count of ``settings.target_counts``."""
    rows = []
    for count in settings.target_counts:
        boxes, classes, masks = target_inputs(settings, count)
        size = settings.target_size
        dense = lambda: build_dense_targets(boxes, classes, masks, size)  # noqa: E731
        sparse = lambda: build_solo_targets(boxes, classes, masks, size)  # noqa: E731
        reference = sparse()
        assert_same_targets(dense(), reference)
        times = alternate(
            {"dense": dense, "solo_d2": sparse},
            settings.warmup,
            settings.target_repeats,
            settings.device,
        )
        row = {
            "instances": count,
            "positive_cells": sum(len(level.pos) for level in reference),
            "dense_ms": times["dense"]["ms"],
            "solo_d2_ms": times["solo_d2"]["ms"],
            "speedup": times["dense"]["ms"] / times["solo_d2"]["ms"],
            "times": times,
        }
        memory.request(row, "dense_", kind="targets", variant="dense", instances=count)
        memory.request(row, "solo_d2_", kind="targets", variant="solo_d2", instances=count)
        print(
            f"  targets, {count} instances: dense {row['dense_ms']:.1f} ms, solo_d2 "
            f"{row['solo_d2_ms']:.1f} ms ({row['speedup']:.1f}x)",
            flush=True,
        )
        rows.append(row)
    return rows


@register_memory_case("targets")
def targets_case(settings: Settings, case: Dict) -> MemoryCase:
    """``{"kind": "targets", "variant": "dense" | "solo_d2", "instances": N}``."""
    boxes, classes, masks = target_inputs(settings, case["instances"])
    builder = build_dense_targets if case["variant"] == "dense" else build_solo_targets
    return MemoryCase(lambda: builder(boxes, classes, masks, settings.target_size))
