"""Drawing predictions for people: which detections to draw, and the threshold for it.

SOLO keeps several class hypotheses of one object (Matrix NMS decays within a class only),
which COCO AP rewards but a picture should not show: :func:`select_for_drawing` keeps the
detections above a score threshold and, of masks that overlap (mask IoU above ``max_overlap``,
whatever their classes), only the best-scored one, so that every object carries one label. The
threshold comes from the validation precision (:func:`solo_d2.evaluation.drawing_threshold`,
written by every evaluation); :func:`find_drawing_threshold` reads it back for a checkpoint.
"""

import json
import logging
import os
from typing import Optional, Sequence

import torch

from detectron2.structures import Instances

from .evaluation import THRESHOLD_FILE

__all__ = ["find_drawing_threshold", "mask_iou_matrix", "select_for_drawing"]

logger = logging.getLogger(__name__)


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """Float[N, N] IoU of every pair of Bool[N, H, W] masks (1 on the diagonal of non-empty
    masks, 0 for pairs of empty masks)."""
    flat = masks.flatten(1).to(torch.float32)
    inter = flat @ flat.t()
    areas = flat.sum(dim=1)
    union = areas[:, None] + areas[None, :] - inter
    return inter / union.clamp(min=1)


def select_for_drawing(
    instances: Instances, score_threshold: float, max_overlap: float = 0.5
) -> Instances:
    """The detections of ``instances`` (with ``scores`` and ``pred_masks``) to draw: score >=
    ``score_threshold``, and of overlapping masks (IoU > ``max_overlap``, any classes) the
    best-scored one only. Sorted by descending score."""
    instances = instances[instances.scores >= score_threshold]
    if len(instances) == 0:
        return instances
    instances = instances[instances.scores.argsort(descending=True, stable=True)]
    iou = mask_iou_matrix(instances.pred_masks)
    keep = []
    for k in range(len(instances)):
        if all(iou[k, j] <= max_overlap for j in keep):
            keep.append(k)
    return instances[torch.tensor(keep, dtype=torch.long)]


def find_drawing_threshold(weights: str, datasets: Sequence[str]) -> Optional[dict]:
    """The drawing threshold that the evaluation of the checkpoint ``weights`` wrote
    (``<its folder>/inference/<dataset>/drawing_threshold.json``, for the first of ``datasets``
    that has one), or None."""
    if not weights or "://" in weights:
        return None
    folder = os.path.dirname(os.path.abspath(weights))
    for name in datasets:
        path = os.path.join(folder, "inference", name, THRESHOLD_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                found = json.load(f)
            if found.get("score_threshold") is not None:
                found["file"] = path
                return found
    return None
