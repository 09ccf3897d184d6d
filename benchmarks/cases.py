"""The benchmark's inputs and models: random instances and images, the benchmark models with
calibrated backbones and a realistic inference load, and one training / inference step.

Random weights would make the models do unrealistically little work, so every backbone gets
calibrated FrozenBN statistics (:func:`calibrate_frozen_bn`), the SOLO models a chosen number of
inference candidates with non-empty masks (:func:`add_inference_load`), and Mask R-CNN
``SCORE_THRESH_TEST 0`` (100 detections) and its usual foreground ROIs in training
(:class:`GtJitteredProposals`). Only public model API is used: ``model.head(...)`` outputs,
``head.mask_probs`` / ``dense_mask_logits``, ``model.post_processor`` and parameter names
(docs/CHECKPOINTS.md).
"""

import math
import os
import re
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch

import solo_d2
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from solo_d2.modeling import SOLO, SOLOHead, points_nms

from .settings import (
    ALL_CHANNEL,
    MASK_RCNN,
    MASK_RCNN_CONFIG,
    REPO,
    SGD,
    SOLO_CONFIGS,
    TINY_BACKBONE,
    TINY_SOLO,
    Settings,
)

__all__ = [
    "random_instances",
    "target_inputs",
    "model_inputs",
    "AllChannelSOLO",
    "GtJitteredProposals",
    "model_config",
    "make_model",
    "calibrate_frozen_bn",
    "add_inference_load",
    "prepare_train",
    "train_step",
    "prepare_infer",
    "infer_step",
]


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


def target_inputs(settings: Settings, count: int) -> Tuple[torch.Tensor, ...]:
    """Inputs of the target builders for one padded ``settings.target_size`` image, on the
    device: (Float[N, 4] boxes, Long[N] classes, Bool[N, H, W] masks), seeded by ``count``."""
    rng = np.random.default_rng(100 + count)
    _, masks, boxes, classes = random_instances(rng, count, *settings.target_size)
    device = torch.device(settings.device)
    return boxes.to(device), classes.to(device), masks.to(device)


def model_inputs(
    settings: Settings, batch: int, training: bool, num_classes: int = 80
) -> List[Dict]:
    """Detectron2 inputs: random Uint8[3, H, W] images, plus polygon gts (COCO format, classes
    below ``num_classes``) for training; ``settings.train_size`` or ``infer_size``, seeded by
    ``batch``."""
    height, width = settings.train_size if training else settings.infer_size
    rng = np.random.default_rng(7 + batch)
    inputs = []
    for _ in range(batch):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        item = {"image": image, "height": height, "width": width}
        if training:
            polygons, _, boxes, classes = random_instances(
                rng, settings.train_instances, height, width, num_classes
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

    All S^2 mask channels of every level are computed with the full 1x1 conv
    (``head.dense_mask_logits``), the targets are expanded to dense Uint8[S^2, h, w] tensors
    per image and level, and the Dice loss reads their positive channels, as the original
    implementation did. Same parameters, targets and loss values as
    :class:`solo_d2.modeling.SOLO`, which computes the positive masks only.
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


#: Mask output biases by parameter name (docs/CHECKPOINTS.md): SOLO's per-cell 1x1 convs and
#: Decoupled SOLO's x / y convs, one per level.
_SOLO_MASK_BIAS = re.compile(r"head\.mask_preds\.\d+\.bias")
_DECOUPLED_MASK_BIAS = re.compile(r"head\.mask_preds_[xy]\.\d+\.bias")


@torch.no_grad()
def add_inference_load(model: torch.nn.Module, inputs: List[Dict], num_candidates: int) -> Dict:
    """Give a random-weight SOLO model the inference load of a trained one (in place).

    * Category output: the bias ``head.cate_pred.bias`` is shifted (all classes alike) so that
      ``num_candidates`` (cell, class) pairs of ``inputs[0]`` pass points-NMS and the score
      threshold. A common shift keeps the points-NMS survivors, so the count is set exactly:
      the threshold logit is placed between the k-th and (k+1)-th largest surviving logits.
    * Mask outputs: SOLO's per-cell biases (``head.mask_preds.{l}.bias``) are set to 0 and
      Decoupled SOLO's x / y biases (``head.mask_preds_x/_y.{l}.bias``) to logit(sqrt(0.5)),
      so mask probabilities straddle the 0.5 threshold and part of each map is foreground.
      SOLOv2's dynamic kernels have no bias (and the kernel branch's bias is already 0), so its
      masks are left as they are.

    Returns the shift and the resulting candidate count and mean foreground fraction.
    """
    model.eval()
    params = dict(model.named_parameters())
    for name, param in params.items():
        if _SOLO_MASK_BIAS.fullmatch(name):
            param.zero_()
        elif _DECOUPLED_MASK_BIAS.fullmatch(name):
            param.fill_(_logit(math.sqrt(0.5)))
    head, post = model.head, model.post_processor
    images = model.preprocess_image(inputs[:1])
    features = model.backbone(images.tensor)
    outputs = head([features[f] for f in model.in_features])
    survivors = (
        torch.cat([x[points_nms(x.sigmoid()) > 0] for x in outputs.cate_logits])
        .sort(descending=True)
        .values
    )
    k = min(num_candidates, len(survivors) - 1)
    shift = _logit(post.score_thresh) - 0.5 * float(survivors[k - 1] + survivors[k])
    params["head.cate_pred.bias"].add_(shift)

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


# ---------------------------------------------------------------------------------- steps
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


def infer_step(model, inputs) -> List[Dict]:
    """One inference call without autograd: Detectron2 outputs, one dict per input."""
    with torch.no_grad():
        return model(inputs)
