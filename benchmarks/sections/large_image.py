"""Section ``large`` (not run by default): inference on a 4000 x 3000 photo, as
``DefaultPredictor`` runs it: the network sees the image resized to ``settings.infer_size``'s
short side (800 x 1067), and the masks are pasted back at 4000 x 3000.

For the SOLO models of ``--models``, with the inference load of the ``infer`` section
(:func:`~benchmarks.cases.add_inference_load`). Pasting runs in chunks of a few masks
(:func:`solo_d2.modeling.postprocess.resize_masks`), so the peak is the network's plus the
output itself (Bool[N, 3000, 4000]: 12 MB per instance) plus a few chunks of float masks.

Rows: ``model``, ``ms``, ``times``, ``instances``, ``output_mb`` (the returned masks),
``peak_mb`` / ``base_mb`` (fresh process).
"""

import gc
from typing import Dict, List

import numpy as np
import torch

from ..cases import add_inference_load, infer_step, make_model
from ..measure import MemoryPlan, alternate
from ..registry import MemoryCase, register_memory_case, register_section
from ..report import fmt, markdown_table
from ..settings import LABELS, MASK_RCNN, Settings

#: The photo's size (height, width) at which the masks are returned.
PHOTO_SIZE = (3000, 4000)


def large_inputs(settings: Settings) -> List[Dict]:
    """One random image at the network's input size for a 4000 x 3000 photo (short side
    ``settings.infer_size[0]``), with the photo's size as the output size."""
    short = min(settings.infer_size)
    height, width = PHOTO_SIZE
    net_size = (short, int(round(short * width / height)))
    rng = np.random.default_rng(11)
    image = torch.from_numpy(rng.integers(0, 256, (3, *net_size), dtype=np.uint8))
    return [{"image": image, "height": height, "width": width}]


def prepare_large(settings: Settings, name: str):
    """(model with its inference load, inputs) of one configuration."""
    inputs = large_inputs(settings)
    model = make_model(name, settings.device, settings.quick, inputs).eval()
    return model, inputs


def large_table(results: Dict) -> str:
    rows = results["large"]
    height, width = PHOTO_SIZE
    net = "x".join(map(str, rows[0]["input_size"])) if rows else "?"
    return (
        f"**Large image** (a {width} x {height} photo: network input {net}, "
        f"masks returned at {width} x {height}; batch 1)\n\n"
        + markdown_table(
            ["model", "ms / image", "instances", "returned masks MB", "peak MB"],
            [
                [
                    LABELS[r["model"]],
                    fmt(r["ms"], ".0f"),
                    r["instances"],
                    fmt(r["output_mb"], ".0f"),
                    fmt(r["peak_mb"], ".0f"),
                ]
                for r in rows
            ],
        )
    )


@register_section("large", order=45, table=large_table, default=False)
def bench_large(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    rows = []
    for name in settings.models:
        if name == MASK_RCNN:
            continue
        model, inputs = prepare_large(settings, name)
        load = add_inference_load(model, inputs, settings.candidates)
        masks = infer_step(model, inputs)[0]["instances"].pred_masks
        times = alternate(
            {name: lambda m=model: infer_step(m, inputs)},
            settings.warmup,
            settings.repeats,
            settings.device,
        )
        row = {
            "model": name,
            "input_size": list(inputs[0]["image"].shape[1:]),
            "ms": times[name]["ms"],
            "times": times[name],
            "instances": len(masks),
            "output_mb": masks.numel() * masks.element_size() / 2**20,
            "load": load,
        }
        assert tuple(masks.shape[1:]) == PHOTO_SIZE, masks.shape
        memory.request(row, kind="large", model=name)
        rows.append(row)
        print(f"  large {name}: {row['ms']:.0f} ms, {row['instances']} instances", flush=True)
        del model, masks
        gc.collect()
    return rows


@register_memory_case("large")
def large_case(settings: Settings, case: Dict) -> MemoryCase:
    """``{"kind": "large", "model": NAME}``: one inference call on the 4000 x 3000 photo."""
    model, inputs = prepare_large(settings, case["model"])
    load = lambda: add_inference_load(model, inputs, settings.candidates)  # noqa: E731
    return MemoryCase(lambda: infer_step(model, inputs), prepare=load)
