"""Section ``optimizer`` (not run by default): the optimizer step of solo_d2's trainer (fused
update, batched per-parameter clipping: :mod:`solo_d2.engine.optim`) against Detectron2's
builder (one parameter at a time, one ``clip_grad_norm_`` call per parameter), on the shapes
quick configs (ResNet-18-FPN, light heads, 8 images of 128 px), SGD and AdamW, clipping on.

Rows: ``model``, ``optimizer``, ``implementation``, ``step_ms`` (optimizer step alone),
``train_ms`` (forward + backward + step), ``times`` (every round, ms).
"""

import dataclasses
import os
from typing import Dict, List

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils.events import EventStorage

from solo_d2.config import add_solo_config
from solo_d2.engine.optim import build_optimizer, optimizer_hyperparameters, optimizer_param_groups
from ..cases import model_inputs, train_step
from ..measure import MemoryPlan, alternate
from ..registry import register_section
from ..report import find_row, fmt, markdown_table, ratio
from ..settings import REPO, Settings

HEADS = ("SOLO", "SOLOv2")
IMAGE_SIZE, BATCH, NUM_CLASSES = 128, 8, 4


def detectron2_optimizer(cfg, model) -> torch.optim.Optimizer:
    """The reference: Detectron2's parameter groups, ``torch.optim`` stepping one parameter at a
    time (``foreach=False``) and Detectron2's per-parameter gradient clipper."""
    optimizer_cls = maybe_add_gradient_clipping(cfg, getattr(torch.optim, cfg.SOLVER.OPTIMIZER))
    return optimizer_cls(
        optimizer_param_groups(cfg, model), **optimizer_hyperparameters(cfg), foreach=False
    )


def optimizer_table(results: Dict) -> str:
    rows = results["optimizer"]

    def vs_detectron2(r, key):
        reference = find_row(
            rows, model=r["model"], optimizer=r["optimizer"], implementation="detectron2"
        )
        return fmt(ratio(r, reference, key), ".2f")

    return (
        f"**Optimizer step** (shapes quick configs, {BATCH} images of {IMAGE_SIZE} px, "
        "gradient clipping on)\n\n"
        + markdown_table(
            [
                "model",
                "optimizer",
                "implementation",
                "step ms",
                "vs Detectron2",
                "train step ms",
                "vs Detectron2",
            ],
            [
                [
                    r["model"],
                    r["optimizer"],
                    r["implementation"],
                    fmt(r["step_ms"], ".1f"),
                    vs_detectron2(r, "step_ms"),
                    fmt(r["train_ms"], ".0f"),
                    vs_detectron2(r, "train_ms"),
                ]
                for r in rows
            ],
        )
    )


@register_section("optimizer", order=80, table=optimizer_table, default=False)
def bench_optimizer(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    quick_inputs = dataclasses.replace(
        settings, train_size=(IMAGE_SIZE, IMAGE_SIZE), train_instances=6
    )
    inputs, rows = model_inputs(quick_inputs, BATCH, training=True, num_classes=NUM_CLASSES), []
    builders = {"detectron2": detectron2_optimizer, "solo_d2": build_optimizer}
    with EventStorage(0):
        for head in HEADS:
            cfg = get_cfg()
            add_solo_config(cfg)
            cfg.merge_from_file(os.path.join(REPO, "configs", f"{head}_shapes_quick.yaml"))
            cfg.MODEL.DEVICE = settings.device
            for optimizer_name in ("SGD", "AdamW"):
                cfg.defrost()
                cfg.SOLVER.OPTIMIZER = optimizer_name
                torch.manual_seed(0)
                model = build_model(cfg).train()
                sum(model(inputs).values()).backward()  # gradients to step with
                optimizers = {name: build(cfg, model) for name, build in builders.items()}
                steps = alternate(
                    {name: opt.step for name, opt in optimizers.items()},
                    settings.warmup,
                    settings.repeats * 3,
                    settings.device,
                )
                trains = alternate(
                    {n: (lambda o=o: train_step(model, o, inputs)) for n, o in optimizers.items()},
                    settings.warmup,
                    settings.repeats,
                    settings.device,
                )
                for name in builders:
                    row = {"model": head, "optimizer": optimizer_name, "implementation": name}
                    row.update(step_ms=steps[name]["ms"], train_ms=trains[name]["ms"])
                    row["times"] = {"step": steps[name]["all_ms"], "train": trains[name]["all_ms"]}
                    rows.append(row)
                    print(f"  {head} {optimizer_name} {name}: {row}", flush=True)
    return rows
