"""Section ``amp`` (not run by default): training steps in float32 against mixed precision.

The models of ``--models`` at batch 2 (``settings.train_size`` images), forward under
``torch.autocast`` (float16 with a gradient scaler, CUDA only; bfloat16 without) as
``SOLVER.AMP`` trains them (:mod:`solo_d2.engine.amp`), backward and SGD step, the precisions
timed in turns. bfloat16 on a CPU without bfloat16 instructions is skipped (solo_d2 trains in
float32 there).

Rows: ``model``, ``precision``, ``batch``, ``ms``, ``times``, ``vs_float32``.
"""

from typing import Dict, List

import torch

from solo_d2.engine.amp import PRECISIONS, cpu_has_native_bfloat16

from ..cases import model_inputs, prepare_train
from ..measure import MemoryPlan, alternate
from ..registry import register_section
from ..report import fmt, markdown_table
from ..settings import LABELS, Settings

BATCH = 2


def precisions(device: str) -> List[str]:
    """The precisions to time on ``device``: float32 and those solo_d2 trains with there."""
    names = ["float32"]
    if device.startswith("cuda"):
        names += ["float16", "bfloat16"]
    elif cpu_has_native_bfloat16():
        names.append("bfloat16")
    return names


def amp_step(model, optimizer, inputs, device_type: str, precision: str, scaler=None):
    """One training step with the forward in ``precision`` ("float32": no autocast)."""
    with torch.autocast(
        device_type, dtype=PRECISIONS.get(precision), enabled=precision != "float32"
    ):
        losses = model(inputs)
    loss = sum(losses.values())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def amp_table(results: Dict) -> str:
    size = "x".join(map(str, results["settings"]["train_size"]))
    return (
        f"**Mixed precision** (training step, batch {BATCH}, {size} images)\n\n"
        + markdown_table(
            ["model", "precision", "ms / step", "vs float32"],
            [
                [
                    LABELS[r["model"]],
                    r["precision"],
                    fmt(r["ms"], ".0f"),
                    fmt(r["vs_float32"], ".2f"),
                ]
                for r in results["amp"]
            ],
        )
    )


@register_section("amp", order=35, table=amp_table, default=False)
def bench_amp(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    from detectron2.utils.events import EventStorage

    device_type = torch.device(settings.device).type
    inputs = model_inputs(settings, BATCH, training=True)
    rows = []
    with EventStorage(0):
        for name in settings.models:
            model, optimizer, _ = prepare_train(settings, name, 1)
            scaler = torch.amp.GradScaler(device_type) if device_type == "cuda" else None
            steps = {
                p: (
                    lambda p=p: amp_step(
                        model, optimizer, inputs, device_type, p, scaler if p == "float16" else None
                    )
                )
                for p in precisions(settings.device)
            }
            times = alternate(steps, settings.warmup, settings.repeats, settings.device)
            for precision in steps:
                ms = times[precision]["ms"]
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "batch": BATCH,
                        "ms": ms,
                        "times": times[precision],
                        "vs_float32": ms / times["float32"]["ms"],
                    }
                )
                print(f"  amp {name} {precision}: {ms:.0f} ms", flush=True)
    return rows
