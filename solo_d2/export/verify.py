"""Compare the detections of an exported model with eager PyTorch's.

An exported graph computes the same detections as eager PyTorch up to float rounding. Rounding
can still change two kinds of discrete decisions, and nothing else:

* **which detections make a cut**: two candidates whose scores differ by less than the rounding
  can come out in the other order at the last kept place (``MAX_PER_IMG``) or on either side of
  the update threshold (``UPDATE_THRESH_TEST``), so one list keeps the one and the other list
  the other. Such an *exchange* involves only detections scored within the tolerance of the cut;
* **Matrix NMS decays**: a mask pixel whose probability is within rounding of the mask
  threshold can flip, which changes the IoUs that decay the scores by a relative amount of
  about 1e-3 (hence ``score_rtol``).

Exact ties are broken the same way everywhere (by cell index, then class: DESIGN.md rule I5),
so they never cause an exchange.
"""

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["match_detections"]


def _as_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _exchangeable(score, cut_scores, tolerance) -> bool:
    return any(abs(score - cut) <= tolerance(cut) for cut in cut_scores)


def match_detections(
    expected: Sequence,
    got: Sequence,
    score_tol: float = 1e-4,
    min_iou: float = 0.99,
    score_rtol: float = 2e-3,
    max_detections: Optional[int] = None,
    score_floor: Optional[float] = None,
) -> Dict:
    """Pair two detection lists ``(masks [N, H, W], scores [N], classes [N], boxes [N, 4])``,
    each sorted by descending score.

    Detection i of ``expected`` pairs with the unpaired detection of ``got`` of the same class,
    a score within ``score_tol + score_rtol * score`` and the highest mask IoU, if that is at
    least ``min_iou`` (pairing, not a rank-by-rank comparison, so that nearly equal scores may
    come out in either order).
    A detection left unpaired is an **exchange** at a cut (see the module docstring) when its
    score is within that tolerance of a cut score: the last kept score of a list that holds
    ``max_detections`` detections (the top-k cut), or ``score_floor`` (the update threshold).
    Without them (None), nothing is exchangeable.

    Returns: ``{"num_expected", "num_got", "matched", "exchanged" (unpaired detections accepted
    as exchanges, both lists together), "exchanged_scores", "max_score_diff", "min_iou",
    "boxes_equal", "ok"}``; ``ok`` when every detection is paired or exchanged, both lists
    exchange as many detections at the top-k cut (the counts differ only by exchanges at
    ``score_floor``) and the paired boxes are equal.
    """
    e_masks, e_scores, e_classes, e_boxes = (_as_numpy(x) for x in expected)
    g_masks, g_scores, g_classes, g_boxes = (_as_numpy(x) for x in got)
    e_flat = e_masks.reshape(len(e_masks), int(np.prod(e_masks.shape[1:]))).astype(bool)
    g_flat = g_masks.reshape(len(g_masks), int(np.prod(g_masks.shape[1:]))).astype(bool)

    def tolerance(score):
        return score_tol + score_rtol * abs(float(score))

    free = np.ones(len(g_scores), dtype=bool)
    paired_e = np.zeros(len(e_scores), dtype=bool)
    score_diffs, ious, boxes_equal = [], [], True
    for i in range(len(e_scores)):
        close = np.abs(g_scores - e_scores[i]) <= tolerance(e_scores[i])
        options = np.flatnonzero(free & (g_classes == e_classes[i]) & close)
        if not len(options):
            continue
        inter = (g_flat[options] & e_flat[i]).sum(axis=1)
        union = (g_flat[options] | e_flat[i]).sum(axis=1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        if iou.max() < min_iou:  # another mask: not a pair
            continue
        j = options[int(np.argmax(iou))]
        free[j], paired_e[i] = False, True
        score_diffs.append(abs(float(g_scores[j]) - float(e_scores[i])))
        ious.append(float(iou.max()))
        boxes_equal &= bool(np.array_equal(g_boxes[j], e_boxes[i]))

    def top_k_cuts(scores):  # the last kept score of a list that the top-k cut filled
        full = max_detections is not None and len(scores) == max_detections
        return [float(scores[-1])] if full and len(scores) else []

    cuts = top_k_cuts(e_scores) + top_k_cuts(g_scores)
    floor = [score_floor] if score_floor is not None else []
    counts = {}  # list -> (unpaired, exchanged at the top-k cut, exchanged at the floor)
    exchanged = []
    for name, unpaired in (("expected", e_scores[~paired_e]), ("got", g_scores[free])):
        top_k = [float(x) for x in unpaired if _exchangeable(x, cuts, tolerance)]
        at_floor = [
            float(x)
            for x in unpaired
            if not _exchangeable(x, cuts, tolerance) and _exchangeable(x, floor, tolerance)
        ]
        counts[name] = (len(unpaired), len(top_k), len(at_floor))
        exchanged += top_k + at_floor
    explained = all(total == top_k + at_floor for total, top_k, at_floor in counts.values())
    explained &= counts["expected"][1] == counts["got"][1]  # one in, one out at the top-k cut
    result = {
        "num_expected": int(len(e_scores)),
        "num_got": int(len(g_scores)),
        "matched": len(ious),
        "exchanged": len(exchanged),
        "exchanged_scores": sorted(exchanged, reverse=True),
        "max_score_diff": max(score_diffs, default=0.0),
        "min_iou": min(ious, default=1.0),
        "boxes_equal": boxes_equal,
    }
    result["ok"] = bool(explained and boxes_equal)
    return result
