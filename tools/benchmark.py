#!/usr/bin/env python
"""Speed and memory of solo_d2 against a dense baseline and Detectron2's Mask R-CNN.

    python tools/benchmark.py [--device cpu|cuda] [--threads N] [--output output/bench]
                              [--sections targets maskhead train infer] [--quick]

Comparisons (docs/BENCHMARKS.md explains them and the numbers):

* ``targets``: ``build_solo_targets`` vs the dense per-object baseline
  (``tools/dense_baseline.py``) on padded 800x1216 images with 5, 20 and 50 random instances;
  both are checked to give identical targets before timing.
* ``maskhead``: SOLO R50-FPN training step, positive-only mask loss (solo_d2) vs the original
  all-channel loss (:class:`AllChannelSOLO`).
* ``train``: training step (forward, backward, SGD step) of SOLO, Decoupled SOLO, SOLOv2 and
  Detectron2's Mask R-CNN, all R50-FPN, batch 1 and 2 at 512x683.
* ``infer``: inference latency of the same models at 800x1216, batch 1.

Random weights would make the models do unrealistically little work, so every backbone gets
calibrated FrozenBN statistics (:func:`calibrate_frozen_bn`), the SOLO models ~300 inference
candidates with non-empty masks (:func:`add_inference_load`), and Mask R-CNN
``SCORE_THRESH_TEST 0`` (100 detections) and its usual foreground ROIs in training
(:class:`GtJitteredProposals`).

Each comparison runs in one process, alternating between its variants: warm-up, then the
median of several repeats. Peak memory of every configuration is measured in a fresh
subprocess (``--measure-memory CASE``): max RSS on CPU, ``torch.cuda.max_memory_allocated``
on CUDA. Writes ``bench.json``, ``bench.md`` (the tables) and ``benchmarks.png`` to
``--output``. ``--quick`` runs tiny models and sizes with one repeat (a smoke test).
"""

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path[:0] = [p for p in (REPO, TOOLS) if p not in sys.path]

import solo_d2  # noqa: E402  (compat shims before detectron2)
from dense_baseline import assert_same_targets, build_dense_targets  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from solo_d2.modeling import SOLO  # noqa: E402
from solo_d2.modeling.heads import SOLOHead  # noqa: E402
from solo_d2.modeling.postprocess import points_nms  # noqa: E402
from solo_d2.modeling.targets import build_solo_targets  # noqa: E402

SOLO_CONFIGS = {
    "SOLO": "configs/SOLO_R50_1x.yaml",
    "DecoupledSOLO": "configs/Decoupled_SOLO_R50_1x.yaml",
    "SOLOv2": "configs/SOLOv2_R50_1x.yaml",
}
MASK_RCNN = "MaskRCNN"
MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
ALL_CHANNEL = "SOLO-allchannel"
MODELS = (*SOLO_CONFIGS, MASK_RCNN)
SECTIONS = ("targets", "maskhead", "train", "infer")
LABELS = {
    "SOLO": "SOLO R50",
    "DecoupledSOLO": "Decoupled SOLO R50",
    "SOLOv2": "SOLOv2 R50",
    MASK_RCNN: "Mask R-CNN R50-FPN",
    ALL_CHANNEL: "SOLO R50, all-channel loss",
}
# --quick: tiny backbones and heads (random weights), as in tests/conftest.py.
TINY_BACKBONE = {
    "MODEL.RESNETS.DEPTH": "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "64",
    "MODEL.FPN.OUT_CHANNELS": "32",
}
TINY_SOLO = {
    "MODEL.SOLO.NUM_GRIDS": "[8, 6, 5, 4, 3]",
    "MODEL.SOLO.SCALE_RANGES": "[[1, 24], [12, 48], [24, 96], [48, 192], [96, 2048]]",
    "MODEL.SOLO.NUM_STACKED_CONVS": "1",
    "MODEL.SOLO.FEAT_CHANNELS": "32",
    "MODEL.SOLO.KERNEL_CHANNELS": "32",
    "MODEL.SOLO.MASK_FEATURE_CHANNELS": "32",
}
SGD = dict(lr=1e-4, momentum=0.9, weight_decay=1e-4)
MASKHEAD_BATCH = 2


@dataclass
class Settings:
    """Sizes and repeats of one benchmark run (``--quick`` shrinks everything)."""

    device: str
    threads: int
    quick: bool = False
    warmup: int = 1
    repeats: int = 3
    target_repeats: int = 5
    target_size: Tuple[int, int] = (800, 1216)
    target_counts: Tuple[int, ...] = (5, 20, 50)
    train_size: Tuple[int, int] = (512, 683)
    train_instances: int = 10
    train_batches: Tuple[int, ...] = (1, 2)
    infer_size: Tuple[int, int] = (800, 1216)
    candidates: int = 300
    models: Tuple[str, ...] = MODELS
    sections: Tuple[str, ...] = SECTIONS
    memory: bool = True

    @classmethod
    def from_args(cls, args) -> "Settings":
        settings = cls(device=args.device, threads=args.threads, memory=not args.no_memory)
        if args.quick:
            settings = cls(
                device=args.device,
                threads=args.threads,
                quick=True,
                warmup=0,
                repeats=1,
                target_repeats=1,
                target_size=(128, 128),
                target_counts=(5, 20),
                train_size=(64, 96),
                train_instances=4,
                train_batches=(2,),
                infer_size=(96, 128),
                candidates=50,
                memory=not args.no_memory,
            )
        for name in ("warmup", "repeats", "target_repeats"):
            if getattr(args, name) is not None:
                setattr(settings, name, getattr(args, name))
        settings.models = tuple(args.models)
        settings.sections = tuple(args.sections)
        return settings


# ---------------------------------------------------------------------------------- inputs
def random_instances(rng, count, height, width, num_classes=80):
    """``count`` random ellipses and star-shaped polygons of log-uniform size.

    The square root of the box area spans ~1.5% to 100% of the short side, so the instances
    fall on every SOLO level. Returns (polygons [V, 2] XY float arrays, Bool[N, H, W] masks,
    Float[N, 4] tight XYXY boxes of the masks, Long[N] classes).
    """
    polygons, masks = [], []
    short = min(height, width)
    while len(polygons) < count:
        scale = math.exp(rng.uniform(math.log(0.015 * short), math.log(short)))
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        rx, ry = 0.5 * scale * math.sqrt(aspect), 0.5 * scale / math.sqrt(aspect)
        if rng.random() < 0.5:
            angles, radii = np.linspace(0, 2 * np.pi, 32, endpoint=False), np.ones(32)
        else:
            vertices = int(rng.integers(5, 12))
            angles, radii = np.sort(rng.uniform(0, 2 * np.pi, vertices)), rng.uniform(
                0.4, 1, vertices
            )
        theta, cx, cy = rng.uniform(0, np.pi), rng.uniform(0, width), rng.uniform(0, height)
        x, y = radii * rx * np.cos(angles), radii * ry * np.sin(angles)
        xy = np.stack(
            [
                np.clip(cx + x * math.cos(theta) - y * math.sin(theta), 0, width - 1),
                np.clip(cy + x * math.sin(theta) + y * math.cos(theta), 0, height - 1),
            ],
            axis=1,
        )
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(xy).astype(np.int32)], 1)
        if mask.sum() >= 10:
            polygons.append(xy)
            masks.append(mask)
    masks = torch.from_numpy(np.stack(masks)).bool() if masks else torch.zeros((0, height, width))
    boxes = torch.zeros((count, 4))
    for k, mask in enumerate(masks):
        ys, xs = mask.nonzero(as_tuple=True)
        boxes[k] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    classes = torch.from_numpy(rng.integers(0, num_classes, count)).long()
    return polygons, masks.bool(), boxes, classes


def target_inputs(settings: Settings, count: int):
    """(boxes, classes, masks) of one padded image for the target builders, on the device."""
    rng = np.random.default_rng(100 + count)
    _, masks, boxes, classes = random_instances(rng, count, *settings.target_size)
    device = torch.device(settings.device)
    return boxes.to(device), classes.to(device), masks.to(device)


def model_inputs(settings: Settings, batch: int, training: bool) -> List[Dict]:
    """Detectron2 inputs: random uint8 images, plus polygon gts (COCO format) for training."""
    height, width = settings.train_size if training else settings.infer_size
    rng = np.random.default_rng(7 + batch)
    inputs = []
    for _ in range(batch):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        item = {"image": image, "height": height, "width": width}
        if training:
            polygons, _, boxes, classes = random_instances(
                rng, settings.train_instances, height, width
            )
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(boxes)
            instances.gt_classes = classes
            instances.gt_masks = PolygonMasks([[p.flatten()] for p in polygons])
            item["instances"] = instances
        inputs.append(item)
    return inputs


# ---------------------------------------------------------------------------------- models
class AllChannelSOLO(SOLO):
    """Vanilla SOLO trained with the original all-channel mask loss (benchmark variant).

    All S^2 mask channels of every level are computed with the full 1x1 conv, the targets are
    expanded to dense Uint8[S^2, h, w] tensors per image and level, and the Dice loss reads
    their positive channels, as the original implementation did. Same parameters, targets and
    loss values as :class:`solo_d2.modeling.SOLO`, which computes the positive masks only.
    """

    def mask_samples(self, outputs, targets):
        if not isinstance(self.head, SOLOHead):
            raise TypeError(
                "the all-channel loss needs the vanilla SOLO head (MODEL.SOLO.HEAD SOLO)"
            )
        probs, masks = [], []
        for level, num_grid in enumerate(self.num_grids):
            logits = self.head.dense_mask_logits(outputs, level)  # [B, S^2, h, w]
            level_probs, level_masks = [], []
            for image, image_targets in enumerate(targets):
                level_targets = image_targets[level]
                dense = logits.new_zeros((num_grid**2, *logits.shape[-2:]), dtype=torch.uint8)
                positive = torch.zeros(num_grid**2, dtype=torch.bool, device=logits.device)
                dense[level_targets.pos] = level_targets.masks[level_targets.gt].to(torch.uint8)
                positive[level_targets.pos] = True
                level_probs.append(logits[image][positive].sigmoid())
                level_masks.append(dense[positive])
            probs.append(torch.cat(level_probs))
            masks.append(torch.cat(level_masks))
        return probs, masks


class GtJitteredProposals(torch.nn.Module):
    """Mask R-CNN training load: adds ``copies`` jittered boxes of every gt to the proposals.

    A trained RPN proposes many boxes around each object, so the ROI sampler finds its usual
    foreground share (up to 25%: 128 of 512 ROIs per image) and the mask head trains on them.
    The random RPN proposes almost none (about one foreground ROI per gt, the appended gt
    itself), which would leave the box and mask heads ~10x too little work. Each copy moves
    every box side by up to 10% of the box size (IoU with the gt >= ~0.6); inference is
    unchanged.
    """

    def __init__(self, rpn: torch.nn.Module, copies: int = 20):
        super().__init__()
        self.rpn, self.copies = rpn, copies

    def forward(self, images, features, gt_instances=None):
        proposals, losses = self.rpn(images, features, gt_instances)
        if not self.training or gt_instances is None:
            return proposals, losses
        generator = torch.Generator().manual_seed(0)
        extended = []
        for found, gt in zip(proposals, gt_instances):
            boxes = gt.gt_boxes.tensor.repeat(self.copies, 1)
            size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            noise = torch.rand(boxes.shape, generator=generator).to(boxes.device) * 0.2 - 0.1
            extra = Instances(found.image_size)
            extra.proposal_boxes = Boxes(boxes + noise * size)
            extra.objectness_logits = found.objectness_logits.new_zeros(len(boxes))
            extended.append(Instances.cat([found, extra]))
        return extended, losses


def model_config(name: str, device: str, quick: bool = False):
    """Detectron2 config of a benchmark model (random weights)."""
    overrides = {"MODEL.WEIGHTS": "", "MODEL.DEVICE": device}
    if name == MASK_RCNN:
        cfg = model_zoo.get_config(MASK_RCNN_CONFIG)
        overrides["MODEL.ROI_HEADS.SCORE_THRESH_TEST"] = "0.0"
    else:
        cfg = get_cfg()
        solo_d2.add_solo_config(cfg)
        config = SOLO_CONFIGS["SOLO" if name == ALL_CHANNEL else name]
        cfg.merge_from_file(os.path.join(REPO, config))
        if quick:
            overrides.update(TINY_SOLO)
    if quick:
        overrides.update(TINY_BACKBONE)
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def make_model(name: str, device: str, quick: bool, calibration: List[Dict]) -> torch.nn.Module:
    """A benchmark model: seeded random weights (the same in every process), backbone
    statistics calibrated on ``calibration`` inputs (:func:`calibrate_frozen_bn`)."""
    cfg = model_config(name, device, quick)
    torch.manual_seed(0)
    if name == ALL_CHANNEL:
        model = AllChannelSOLO(cfg).to(torch.device(device))
    else:
        model = build_model(cfg)
    if name == MASK_RCNN:
        model.proposal_generator = GtJitteredProposals(model.proposal_generator)
    calibrate_frozen_bn(model, calibration)
    return model


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, inputs: List[Dict]):
    """Set the statistics of every ``FrozenBatchNorm2d`` to those of its input on ``inputs``.

    With random weights the FrozenBN layers of the ResNet are identities and the features grow
    to ~1e4 through the residual stages, which saturates Mask R-CNN's RPN (2 proposals left).
    Normalising each layer's input once (one forward pass, layer by layer through pre-hooks)
    gives unit-scale features, as a pretrained backbone has. The cost of a model is unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]

    def set_statistics(module, args):
        module.running_mean.copy_(args[0].mean(dim=(0, 2, 3)))
        module.running_var.copy_(args[0].var(dim=(0, 2, 3)))

    hooks = [layer.register_forward_pre_hook(set_statistics) for layer in layers]
    try:
        model.backbone(model.preprocess_image(inputs).tensor)
    finally:
        for hook in hooks:
            hook.remove()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@torch.no_grad()
def add_inference_load(model: torch.nn.Module, inputs: List[Dict], num_candidates: int) -> Dict:
    """Give a random-weight SOLO model the inference load of a trained one (in place).

    * Category output: the bias of ``head.cate_pred`` is shifted (all classes alike) so that
      ``num_candidates`` (cell, class) pairs of ``inputs[0]`` pass points-NMS and the score
      threshold. A common shift keeps the points-NMS survivors, so the count is set exactly:
      the threshold logit is placed between the k-th and (k+1)-th largest surviving logits.
    * Mask outputs: SOLO's per-cell biases are set to 0 and Decoupled SOLO's x / y biases to
      logit(sqrt(0.5)), so mask probabilities straddle the 0.5 threshold and part of each map
      is foreground. SOLOv2's dynamic kernels have no bias (and the kernel branch's bias is
      already 0), so its masks are left as they are.

    Returns the shift and the resulting candidate count and mean foreground fraction.
    """
    model.eval()
    head = model.head
    if hasattr(head, "mask_preds"):
        for conv in head.mask_preds:
            conv.bias.zero_()
    if hasattr(head, "mask_preds_x"):
        for conv in (*head.mask_preds_x, *head.mask_preds_y):
            conv.bias.fill_(_logit(math.sqrt(0.5)))
    images = model.preprocess_image(inputs[:1])
    features = model.backbone(images.tensor)
    outputs = head([features[f] for f in model.in_features])
    survivors = (
        torch.cat([x[points_nms(x.sigmoid()) > 0] for x in outputs.cate_logits])
        .sort(descending=True)
        .values
    )
    k = min(num_candidates, len(survivors) - 1)
    post = model.post_processor
    shift = _logit(post.score_thresh) - 0.5 * float(survivors[k - 1] + survivors[k])
    head.cate_pred.bias.add_(shift)

    cells, _, scores = post.candidates([x[0] + shift for x in outputs.cate_logits])
    cells = cells.unique()
    fill, start = [], 0
    for level, num_grid in enumerate(post.num_grids):
        local = cells[(cells >= start) & (cells < start + num_grid**2)] - start
        start += num_grid**2
        if len(local):
            masks = head.mask_probs(outputs, level, torch.zeros_like(local), local)
            fill.append((masks > post.mask_thresh).float().mean(dim=(1, 2)))
    fill = torch.cat(fill) if fill else torch.zeros(0)
    return {
        "cate_bias_shift": round(shift, 4),
        "candidates": len(scores),
        "candidate_cells": len(cells),
        "mask_foreground_fraction": round(float(fill.mean()), 3) if len(fill) else 0.0,
    }


def prepare_train(settings: Settings, name: str, batch: int):
    """(model in training mode, SGD optimizer, inputs) of one training-step configuration."""
    calibration = model_inputs(settings, 1, training=True)
    model = make_model(name, settings.device, settings.quick, calibration).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(params, **SGD), model_inputs(settings, batch, training=True)


def train_step(model, optimizer, inputs):
    """One training step: forward (losses), backward, SGD step."""
    losses = model(inputs)
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def prepare_infer(settings: Settings, name: str):
    """(model in eval mode, inputs) of one inference configuration (no load added yet)."""
    inputs = model_inputs(settings, 1, training=False)
    return make_model(name, settings.device, settings.quick, inputs).eval(), inputs


def infer_step(model, inputs):
    with torch.no_grad():
        return model(inputs)


# ---------------------------------------------------------------------------------- measuring
def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(fns: Dict[str, Callable], warmup: int, repeats: int, device: str) -> Dict[str, Dict]:
    """Time the functions in turns (warm-up rounds, then ``repeats`` rounds, rotating the order).

    Returns per name the median and all times in ms.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(1000 * (time.perf_counter() - start))
    return {
        n: {"ms": statistics.median(t), "all_ms": [round(x, 2) for x in t]}
        for n, t in times.items()
    }


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_memory_case(settings: Settings, case: Dict) -> Dict:
    """Peak memory of one configuration, run in this (fresh) process: warm-up + one step.

    ``base_mb``: memory once the model and inputs exist (CPU: max RSS so far, including the
    interpreter and libraries; CUDA: allocated tensors); ``peak_mb``: the peak after the steps.
    """
    kind, device = case["kind"], settings.device
    if kind == "targets":
        boxes, classes, masks = target_inputs(settings, case["instances"])
        builder = build_dense_targets if case["variant"] == "dense" else build_solo_targets
        step = lambda: builder(boxes, classes, masks, settings.target_size)  # noqa: E731
    elif kind == "train":
        model, optimizer, inputs = prepare_train(settings, case["model"], case["batch"])
        step = lambda: train_step(model, optimizer, inputs)  # noqa: E731
    else:
        model, inputs = prepare_infer(settings, case["model"])
        step = lambda: infer_step(model, inputs)  # noqa: E731
    gc.collect()
    if device.startswith("cuda"):
        synchronize(device)
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _peak_mb(device)
    if kind == "infer" and case["model"] != MASK_RCNN:
        add_inference_load(model, inputs, settings.candidates)
    with EventStorage(0):
        for _ in range(2):
            step()
    synchronize(device)
    result = {"base_mb": round(base, 1), "peak_mb": round(_peak_mb(device), 1)}
    with contextlib.suppress(OSError, StopIteration):  # cross-check: the kernel's VmHWM
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        result["vm_hwm_mb"] = round(int(hwm.split()[1]) / 1024, 1)
    return result


# Linux charges a new process's max RSS with the resident size of the process that exec'ed it,
# so measurement processes are started from this small launcher, not from the (large) benchmark.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def memory_in_subprocess(settings: Settings, case: Dict) -> Dict:
    """Run :func:`measure_memory_case` in a fresh interpreter (same device and threads)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--measure-memory",
        json.dumps(case),
        "--device",
        settings.device,
        "--threads",
        str(settings.threads),
    ] + (["--quick"] if settings.quick else [])
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  memory case {case} failed: {' | '.join(tail)}", flush=True)
        return {"base_mb": None, "peak_mb": None}
    return json.loads(lines[-1])


class MemoryPlan:
    """Memory cases requested by the sections, measured after all timing (one subprocess per
    distinct case, ``jobs`` at a time) and written into the requesting rows."""

    def __init__(self, settings: Settings, jobs: int = 1):
        self.settings, self.jobs, self.requests = settings, jobs, []

    def request(self, row: Dict, prefix: str = "", **case):
        row[prefix + "base_mb"] = row[prefix + "peak_mb"] = None
        if self.settings.memory:
            self.requests.append((row, prefix, case))

    def run(self):
        cases = {json.dumps(c, sort_keys=True): c for _, _, c in self.requests}
        if not cases:
            return
        print(
            f"[memory] {len(cases)} cases in fresh subprocesses, {self.jobs} at a time", flush=True
        )

        def measure(key):
            start = time.perf_counter()
            result = memory_in_subprocess(self.settings, cases[key])
            print(f"  {cases[key]}: {result} ({time.perf_counter() - start:.0f} s)", flush=True)
            return key, result

        with ThreadPoolExecutor(self.jobs) as pool:
            measured = dict(pool.map(measure, list(cases)))
        for row, prefix, case in self.requests:
            result = measured[json.dumps(case, sort_keys=True)]
            row[prefix + "base_mb"], row[prefix + "peak_mb"] = result["base_mb"], result["peak_mb"]


# ---------------------------------------------------------------------------------- sections
def bench_targets(settings: Settings, memory: MemoryPlan) -> List[Dict]:
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


def bench_maskhead(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    return _train_rows(settings, ["SOLO", ALL_CHANNEL], [MASKHEAD_BATCH], memory)


def bench_train(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    return _train_rows(settings, list(settings.models), settings.train_batches, memory)


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


# ---------------------------------------------------------------------------------- report
def machine_info(settings: Settings) -> Dict:
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


def _find(rows, **keys):
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def _ratio(a, b, key):
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return None
    return a[key] / b[key]


def evaluate_checks(results: Dict) -> List[Check]:
    """The four targets of the issue."""
    targets, train, infer = (results.get(k, []) for k in ("targets", "train", "infer"))
    at20 = _find(targets, instances=20)
    rcnn = _find(infer, model=MASK_RCNN)
    rcnn_train = _find(train, model=MASK_RCNN, batch=2)
    return [
        Check(
            "target builder speed-up over the dense baseline, 20 instances",
            at20["speedup"] if at20 else None,
            20.0,
            lower_is_better=False,
        ),
        Check(
            "SOLO R50 inference latency / Mask R-CNN",
            _ratio(_find(infer, model="SOLO"), rcnn, "ms"),
            1.0,
            lower_is_better=True,
        ),
        Check(
            "SOLOv2 R50 inference latency / Mask R-CNN",
            _ratio(_find(infer, model="SOLOv2"), rcnn, "ms"),
            0.8,
            lower_is_better=True,
        ),
        Check(
            "SOLO R50 training peak memory / Mask R-CNN, batch 2",
            _ratio(_find(train, model="SOLO", batch=2), rcnn_train, "peak_mb"),
            1.0,
            lower_is_better=True,
        ),
    ]


def _fmt(value, spec=".1f"):
    return "–" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_tables(results: Dict) -> str:
    """The results as Markdown tables (printed, written to bench.md, quoted in the docs)."""
    info, parts = results["machine"], []
    parts.append(
        f"Device {info['device']} ({info.get('gpu', info['cpu'])}), {info['cores']} cores, "
        f"torch {info['torch']}, torch.set_num_threads({info['threads']}) for every model; "
        f"warm-up {results['settings']['warmup']}, median of {results['settings']['repeats']} "
        f"(targets: {results['settings']['target_repeats']}) alternating repeats."
    )
    if results.get("targets"):
        size = "x".join(map(str, results["settings"]["target_size"]))
        parts.append(
            f"**Target builder** (one padded {size} image, SOLO R50 grids)\n\n"
            + _table(
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
                        _fmt(r["dense_ms"]),
                        _fmt(r["solo_d2_ms"], ".2f"),
                        f"{r['speedup']:.1f}x",
                        _fmt(r["dense_peak_mb"], ".0f"),
                        _fmt(r["solo_d2_peak_mb"], ".0f"),
                    ]
                    for r in results["targets"]
                ],
            )
        )
    if results.get("maskhead"):
        rows, base = results["maskhead"], _find(results["maskhead"], model="SOLO")
        parts.append(
            f"**Mask head** (SOLO R50-FPN training step, batch {MASKHEAD_BATCH})\n\n"
            + _table(
                ["variant", "ms / step", "vs positive-only", "peak MB", "vs positive-only"],
                [
                    [
                        (
                            "positive-only (solo_d2)"
                            if r["model"] == "SOLO"
                            else "all-channel (original)"
                        ),
                        _fmt(r["ms"], ".0f"),
                        _fmt(_ratio(r, base, "ms"), ".2f"),
                        _fmt(r["peak_mb"], ".0f"),
                        _fmt(_ratio(r, base, "peak_mb"), ".2f"),
                    ]
                    for r in rows
                ],
            )
        )
    if results.get("train"):
        size = "x".join(map(str, results["settings"]["train_size"]))
        rows = results["train"]
        parts.append(
            f"**Training step** (forward + backward + SGD, {size} images)\n\n"
            + _table(
                ["model", "batch", "ms / step", "vs Mask R-CNN", "peak MB", "vs Mask R-CNN"],
                [
                    [
                        LABELS[r["model"]],
                        r["batch"],
                        _fmt(r["ms"], ".0f"),
                        _fmt(
                            _ratio(r, _find(rows, model=MASK_RCNN, batch=r["batch"]), "ms"), ".2f"
                        ),
                        _fmt(r["peak_mb"], ".0f"),
                        _fmt(
                            _ratio(r, _find(rows, model=MASK_RCNN, batch=r["batch"]), "peak_mb"),
                            ".2f",
                        ),
                    ]
                    for r in rows
                ],
            )
        )
    if results.get("infer"):
        size = "x".join(map(str, results["settings"]["infer_size"]))
        rows, rcnn = results["infer"], _find(results["infer"], model=MASK_RCNN)
        parts.append(
            f"**Inference** (batch 1, {size} image)\n\n"
            + _table(
                [
                    "model",
                    "ms / image",
                    "vs Mask R-CNN",
                    "output instances",
                    "candidates",
                    "peak MB",
                ],
                [
                    [
                        LABELS[r["model"]],
                        _fmt(r["ms"], ".0f"),
                        _fmt(_ratio(r, rcnn, "ms"), ".2f"),
                        r["instances"],
                        r["load"].get("candidates", "–"),
                        _fmt(r["peak_mb"], ".0f"),
                    ]
                    for r in rows
                ],
            )
        )
    parts.append(
        "**Targets**\n\n"
        + _table(
            ["target", "measured", "required", "result"],
            [
                [
                    c["name"],
                    _fmt(c["value"], ".2f") + "x" if c["value"] is not None else "–",
                    ("<= " if c["lower_is_better"] else ">= ") + f"{c['limit']:g}x",
                    c["verdict"],
                ]
                for c in results["checks"]
            ],
        )
    )
    return "\n\n".join(parts) + "\n"


def plot(results: Dict, path: str):
    """A 2 x 3 summary figure (matplotlib, Agg backend)."""
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
        notes = [f"{_fmt(r['peak_mb'], '.0f')} MB peak" for r in rows]
        annotated_bars(ax_head, labels, rows, notes)
        ax_head.set_ylabel("ms / training step")
    ax_head.set_title(f"SOLO mask loss, batch {MASKHEAD_BATCH}")

    def grouped(ax, rows, key, ylabel, title):
        batches = sorted({r["batch"] for r in rows})
        names = [n for n in MODELS if any(r["model"] == n for r in rows)]
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            values = [(_find(rows, model=name, batch=b) or {}).get(key) or 0 for b in batches]
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


# ---------------------------------------------------------------------------------- main
def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"default: {default_device}")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch.set_num_threads for every model (default: %(default)s)",
    )
    parser.add_argument("--output", default="output/bench", help="folder for JSON, tables, PNG")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models of the train / infer comparisons",
    )
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default 1, --quick 0)")
    parser.add_argument("--repeats", type=int, help="timed rounds of the models (default 3)")
    parser.add_argument(
        "--target-repeats", type=int, help="timed rounds of the targets (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, 1 repeat")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--memory-jobs",
        type=int,
        default=2,
        help="memory subprocesses run at a time, after all timing (default 2)",
    )
    parser.add_argument("--measure-memory", metavar="CASE", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> Dict:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings.from_args(args)
    if args.measure_memory:
        print(json.dumps(measure_memory_case(settings, json.loads(args.measure_memory))))
        return {}

    start = time.perf_counter()
    results = {"machine": machine_info(settings), "settings": asdict(settings)}
    print(f"solo_d2 benchmark: {results['machine']}", flush=True)
    memory = MemoryPlan(settings, args.memory_jobs)
    sections = {
        "targets": bench_targets,
        "maskhead": bench_maskhead,
        "train": bench_train,
        "infer": bench_infer,
    }
    for name in SECTIONS:
        if name in settings.sections:
            print(f"[{name}]", flush=True)
            results[name] = sections[name](settings, memory)
    memory.run()
    results["checks"] = [{**asdict(c), "verdict": c.verdict} for c in evaluate_checks(results)]
    results["total_seconds"] = round(time.perf_counter() - start, 1)

    os.makedirs(args.output, exist_ok=True)
    tables = render_tables(results)
    print("\n" + tables)
    with open(os.path.join(args.output, "bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "bench.md"), "w") as f:
        f.write(tables)
    plot(results, os.path.join(args.output, "benchmarks.png"))
    print(
        f"wrote {args.output}/bench.json, bench.md, benchmarks.png "
        f"({results['total_seconds']:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
