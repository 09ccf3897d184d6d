"""Section ``infer``: inference latency of the models of ``--models``, batch 1, at
``settings.infer_size``; the SOLO models carry a trained model's load
(:func:`~benchmarks.cases.add_inference_load`).

Rows: ``model``, ``ms``, ``times``, ``instances`` (detections), ``load`` (the added load),
``peak_mb`` / ``base_mb``.
"""

import gc
from typing import Dict, List

from ..cases import add_inference_load, infer_step, model_inputs, prepare_infer
from ..measure import MemoryPlan, alternate
from ..registry import MemoryCase, register_memory_case, register_section
from ..report import find_row, fmt, markdown_table, ratio
from ..settings import LABELS, MASK_RCNN, Settings


def infer_table(results: Dict) -> str:
    size = "x".join(map(str, results["settings"]["infer_size"]))
    rows, rcnn = results["infer"], find_row(results["infer"], model=MASK_RCNN)
    return f"**Inference** (batch 1, {size} image)\n\n" + markdown_table(
        ["model", "ms / image", "vs Mask R-CNN", "output instances", "candidates", "peak MB"],
        [
            [
                LABELS[r["model"]],
                fmt(r["ms"], ".0f"),
                fmt(ratio(r, rcnn, "ms"), ".2f"),
                r["instances"],
                r["load"].get("candidates", "–"),
                fmt(r["peak_mb"], ".0f"),
            ]
            for r in rows
        ],
    )


@register_section("infer", order=40, table=infer_table)
def bench_infer(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    inputs = model_inputs(settings, 1, training=False)
    models, loads = {}, {}
    for name in settings.models:
        models[name] = prepare_infer(settings, name)[0]
        if name != MASK_RCNN:
            loads[name] = add_inference_load(models[name], inputs, settings.candidates)
            print(f"  inference load {name}: {loads[name]}", flush=True)
    outputs = {
        name: len(infer_step(model, inputs)[0]["instances"]) for name, model in models.items()
    }
    times = alternate(
        {n: (lambda m=m: infer_step(m, inputs)) for n, m in models.items()},
        settings.warmup,
        settings.repeats,
        settings.device,
    )
    rows = []
    for name in settings.models:
        row = {
            "model": name,
            "ms": times[name]["ms"],
            "times": times[name],
            "instances": outputs[name],
            "load": loads.get(name, {}),
        }
        memory.request(row, kind="infer", model=name)
        rows.append(row)
        print(f"  infer {name}: {times[name]['ms']:.0f} ms, {outputs[name]} instances", flush=True)
    del models
    gc.collect()
    return rows


@register_memory_case("infer")
def infer_case(settings: Settings, case: Dict) -> MemoryCase:
    """``{"kind": "infer", "model": NAME}``: one inference call; the SOLO models get their
    inference load after the base memory is read."""
    model, inputs = prepare_infer(settings, case["model"])
    load = lambda: add_inference_load(model, inputs, settings.candidates)  # noqa: E731
    return MemoryCase(
        lambda: infer_step(model, inputs), prepare=None if case["model"] == MASK_RCNN else load
    )
