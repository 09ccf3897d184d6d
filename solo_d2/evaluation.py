"""COCO evaluation of SOLO models (mask AP and box AP of the tight mask boxes)."""

import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from .compat import HAS_D2_CPP_OPS
from .data.validation import clean_coco_ground_truth

__all__ = ["build_evaluator", "summarize_results"]

logger = logging.getLogger(__name__)


def build_evaluator(cfg, dataset_name, output_folder=None):
    """Detectron2's ``COCOEvaluator`` for mask AP and box AP (SOLO outputs tight mask boxes).

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
    evaluator = COCOEvaluator(
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
