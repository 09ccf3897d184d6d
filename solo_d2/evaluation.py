"""COCO evaluation of SOLO models (mask AP and box AP of the tight mask boxes), and the score
threshold for drawing predictions that the validation precision gives."""

import json
import logging
import os

import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from .compat import HAS_D2_CPP_OPS
from .data.validation import clean_coco_ground_truth

__all__ = [
    "DRAWING_PRECISION",
    "THRESHOLD_FILE",
    "SOLOEvaluator",
    "build_evaluator",
    "drawing_threshold",
    "summarize_results",
]

logger = logging.getLogger(__name__)

#: Precision (class mean, mask IoU >= 0.5) of the detections drawn by ``tools/predict.py``.
DRAWING_PRECISION = 0.7
#: File written next to the evaluation results (``OUTPUT_DIR/inference/<dataset>/``).
THRESHOLD_FILE = "drawing_threshold.json"


def drawing_threshold(coco_eval, min_precision: float = DRAWING_PRECISION) -> dict:
    """The score threshold for drawing, from a COCO mask evaluation (``COCOeval`` after
    ``accumulate``): the lowest score at which the class-mean precision at mask IoU 0.5 (all
    areas, 100 detections) reaches ``min_precision``; if it never does, the score of the best
    class-mean F1. Returns ``{"score_threshold", "precision", "recall", "rule"}``.

    COCO's precision at a recall is the best precision at that recall or more, so it grows with
    the threshold and "the lowest threshold" keeps as much recall as the precision allows.
    """
    precision = coco_eval.eval["precision"][0, :, :, 0, -1]  # [recall points, classes]
    scores = coco_eval.eval["scores"][0, :, :, 0, -1]
    recalls = np.asarray(coco_eval.params.recThrs)
    present = (precision > -1).any(axis=0)  # classes with ground truth
    precision, scores = precision[:, present], scores[:, present]
    candidates = np.unique(scores[scores > 0])[::-1]  # high to low
    if not len(candidates):
        return {"score_threshold": None, "precision": 0.0, "recall": 0.0, "rule": "no detection"}
    rows = []
    for threshold in candidates:
        reached = (scores >= threshold) & (precision > 0)  # recall points kept at this score
        recall = np.where(reached.any(axis=0), (reached * recalls[:, None]).max(axis=0), 0.0)
        last = reached.shape[0] - 1 - np.argmax(reached[::-1], axis=0)
        prec = np.where(reached.any(axis=0), precision[last, np.arange(len(last))], 0.0)
        rows.append((float(threshold), float(prec.mean()), float(recall.mean())))
    meeting = [row for row in rows if row[1] >= min_precision]
    if meeting:
        threshold, prec, recall = meeting[-1]  # the lowest threshold with that precision
        rule = f"lowest score with precision >= {min_precision}"
    else:
        f1 = [2 * p * r / max(p + r, 1e-9) for _, p, r in rows]
        threshold, prec, recall = rows[int(np.argmax(f1))]
        rule = f"best F1 (precision {min_precision} is never reached)"
    return {
        "score_threshold": round(threshold, 4),
        "precision": round(prec, 4),
        "recall": round(recall, 4),
        "rule": rule,
    }


class SOLOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator``; after a mask evaluation it also writes the drawing
    threshold of :func:`drawing_threshold` to ``<output_dir>/drawing_threshold.json`` and logs
    it (``tools/predict.py`` reads it)."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if iou_type == "segm" and coco_eval is not None and self._output_dir:
            threshold = drawing_threshold(coco_eval)
            logger.info("Drawing threshold from the validation precision: %s", threshold)
            with open(os.path.join(self._output_dir, THRESHOLD_FILE), "w") as f:
                json.dump({"dataset": self._metadata.name, **threshold}, f)
        return results


def build_evaluator(cfg, dataset_name, output_folder=None):
    """Detectron2's ``COCOEvaluator`` for mask AP and box AP (SOLO outputs tight mask boxes),
    which also writes the drawing threshold (:class:`SOLOEvaluator`).

    The fast C++ COCO evaluation is used only when detectron2 has its C++ ops. Ground-truth
    polygons that pycocotools cannot rasterise are repaired as for training
    (:func:`~solo_d2.data.validation.clean_coco_ground_truth`).
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type not in ("coco", "lvis"):
        raise NotImplementedError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; solo_d2 evaluates "
            "COCO-format instance segmentation (evaluator_type 'coco')"
        )
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator = SOLOEvaluator(
        dataset_name,
        tasks=("bbox", "segm"),
        distributed=True,
        output_dir=output_folder,
        use_fast_impl=HAS_D2_CPP_OPS,
    )
    # The ground truth COCOEvaluator read from the dataset's JSON: the polygons that training
    # repaired would make pycocotools fail at the end of the evaluation.
    clean_coco_ground_truth(evaluator._coco_api, dataset_name)
    return evaluator


def summarize_results(results, dataset_names):
    """Log (and return) one line per dataset with the mask AP and box AP of COCOEvaluator."""
    if "segm" in results or "bbox" in results:  # DefaultTrainer.test unwraps a single dataset
        results = {dataset_names[0]: results}
    lines = []
    for name, res in results.items():
        parts = [
            f"{label} AP {res[task]['AP']:.2f}"
            for task, label in (("segm", "mask"), ("bbox", "box"))
            if task in res
        ]
        lines.append(f"{name}: " + ", ".join(parts))
        logger.info("[solo_d2] %s", lines[-1])
    return lines
