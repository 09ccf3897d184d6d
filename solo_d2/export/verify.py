"""Compare the detections of an exported model with eager PyTorch's."""

from typing import Dict, Sequence

import numpy as np

__all__ = ["match_detections"]


def _as_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def match_detections(
    expected: Sequence, got: Sequence, score_tol: float = 1e-4, min_iou: float = 0.99
) -> Dict:
    """Pair two detection lists ``(masks [N, H, W], scores [N], classes [N], boxes [N, 4])``.

    Detection i of ``expected`` pairs with the unpaired detection of ``got`` of the same class,
    a score within ``score_tol`` and the highest mask IoU. Pairing instead of comparing rank by
    rank keeps two nearly equal scores (closer than float rounding) that come out in the other
    order from failing the comparison.

    Returns: ``{"num_expected", "num_got", "matched", "max_score_diff", "min_iou",
    "boxes_equal", "ok"}``; ``ok`` when the counts are equal, every detection is paired with
    IoU >= ``min_iou``, and the paired boxes are equal.
    """
    e_masks, e_scores, e_classes, e_boxes = (_as_numpy(x) for x in expected)
    g_masks, g_scores, g_classes, g_boxes = (_as_numpy(x) for x in got)
    e_flat = e_masks.reshape(len(e_masks), int(np.prod(e_masks.shape[1:]))).astype(bool)
    g_flat = g_masks.reshape(len(g_masks), int(np.prod(g_masks.shape[1:]))).astype(bool)
    free = np.ones(len(g_scores), dtype=bool)
    score_diffs, ious, boxes_equal = [], [], True
    for i in range(len(e_scores)):
        options = np.flatnonzero(
            free & (g_classes == e_classes[i]) & (np.abs(g_scores - e_scores[i]) <= score_tol)
        )
        if not len(options):
            continue
        inter = (g_flat[options] & e_flat[i]).sum(axis=1)
        union = (g_flat[options] | e_flat[i]).sum(axis=1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        j = options[int(np.argmax(iou))]
        free[j] = False
        score_diffs.append(abs(float(g_scores[j]) - float(e_scores[i])))
        ious.append(float(iou.max()))
        boxes_equal &= bool(np.array_equal(g_boxes[j], e_boxes[i]))
    matched = len(ious)
    result = {
        "num_expected": int(len(e_scores)),
        "num_got": int(len(g_scores)),
        "matched": matched,
        "max_score_diff": max(score_diffs, default=0.0),
        "min_iou": min(ious, default=1.0),
        "boxes_equal": boxes_equal,
    }
    result["ok"] = bool(
        len(e_scores) == len(g_scores) == matched and result["min_iou"] >= min_iou and boxes_equal
    )
    return result
