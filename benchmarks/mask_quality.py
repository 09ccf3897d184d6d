"""Where a model's masks lose AP: mask AP per IoU threshold and how each gt object is outlined.

    python -m benchmarks.mask_quality --dataset shapes_dense_val \\
        output/.../inference/shapes_dense_val/coco_instances_results.json [more results ...]

For each COCO results file (``COCOEvaluator``'s ``coco_instances_results.json``) against the gt
of a registered dataset, prints one table row: the mask AP (``pycocotools``) at each IoU
threshold 0.50:0.95, then, for every gt object and the detection of any class with a score >=
``--min-score`` that overlaps it most, the mean of that best IoU (0 for a missed object), the
fraction of objects outlined at IoU >= 0.75 / 0.85 / 0.95, the median ratio of the detection's
pixel count to the gt's and the spread of their centroid offset (pixels; objects matched at IoU
> 0.5). The AP row says at which IoU a model trails another; the others whether its masks are
too large (a biased target or threshold), shifted, or just coarse.
"""

import argparse
import contextlib
import io
import json
from typing import Dict, List

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import solo_d2  # noqa: F401  (registers the shapes datasets)
from detectron2.data.datasets.coco import convert_to_coco_dict

__all__ = ["IOU_THRESHOLDS", "ap_per_iou", "object_outlines", "gt_coco"]

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
OUTLINE_LEVELS = (0.75, 0.85, 0.95)


def gt_coco(dataset: str) -> COCO:
    """The gt of a registered Detectron2 dataset as a ``pycocotools`` COCO object."""
    coco = COCO()
    coco.dataset = convert_to_coco_dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results_without_bboxes(results: List[Dict]) -> List[Dict]:
    """``loadRes`` derives segm boxes from the masks only when no "bbox" key is given."""
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results]


def ap_per_iou(gt: COCO, results: List[Dict]) -> List[float]:
    """Mask AP (0-100, all areas, 100 detections) at each of :data:`IOU_THRESHOLDS`; NaN where
    no gt object exists. ``results``: COCO result dicts with RLE ``segmentation``."""
    if not results:
        return [0.0] * len(IOU_THRESHOLDS)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(_results_without_bboxes(results)), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", 100 dets
    aps = []
    for per_threshold in precision:
        valid = per_threshold[per_threshold > -1]
        aps.append(float(valid.mean() * 100) if valid.size else float("nan"))
    return aps


def object_outlines(gt: COCO, results: List[Dict], min_score: float = 0.3) -> Dict:
    """Per gt object (crowd regions aside), the detection of score >= ``min_score`` with the
    highest mask IoU: ``mean_iou`` (0 for objects without one), ``iou>=t`` fractions for t in
    :data:`OUTLINE_LEVELS`, and over the objects matched at IoU > 0.5 the median
    ``area_ratio`` (detection pixels / gt pixels) and ``centroid_offset_std`` (px, x and y
    pooled)."""
    per_image: Dict[int, List[Dict]] = {}
    for r in results:
        if r["score"] >= min_score:
            per_image.setdefault(r["image_id"], []).append(r)
    best_ious, ratios, offsets = [], [], []
    for image_id in gt.getImgIds():
        annotations = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        detections = [r["segmentation"] for r in per_image.get(image_id, [])]
        for annotation in annotations:
            gt_rle = gt.annToRLE(annotation)
            if not detections:
                best_ious.append(0.0)
                continue
            ious = mask_util.iou(detections, [gt_rle], [0]).ravel()
            best = int(ious.argmax())
            best_ious.append(float(ious[best]))
            if ious[best] > 0.5:
                drawn = mask_util.decode(detections[best]).astype(bool)
                target = mask_util.decode(gt_rle).astype(bool)
                ratios.append(drawn.sum() / target.sum())
                offsets.extend(_centroid(drawn) - _centroid(target))
    best_ious = np.asarray(best_ious, dtype=np.float64)
    mean_iou = float(best_ious.mean()) if len(best_ious) else 0.0
    row = {"objects": len(best_ious), "mean_iou": mean_iou}
    row.update({f"iou>={t}": float((best_ious >= t).mean()) for t in OUTLINE_LEVELS})
    row["area_ratio"] = float(np.median(ratios)) if ratios else float("nan")
    row["centroid_offset_std"] = float(np.std(offsets)) if offsets else float("nan")
    return row


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="coco_instances_results.json files")
    parser.add_argument("--dataset", default="shapes_dense_val", help="registered gt dataset")
    parser.add_argument("--min-score", type=float, default=0.3)
    args = parser.parse_args(argv)
    gt = gt_coco(args.dataset)
    thresholds = " | ".join(f"{t:.2f}" for t in IOU_THRESHOLDS)
    levels = " | ".join(f"IoU >= {t}" for t in OUTLINE_LEVELS)
    print(f"| results | {thresholds} | mean best IoU | {levels} | area ratio | offset std |")
    print("|---|" + "---|" * (len(IOU_THRESHOLDS) + len(OUTLINE_LEVELS) + 3))
    for path in args.results:
        with open(path) as f:
            results = json.load(f)
        aps = " | ".join(f"{ap:.1f}" for ap in ap_per_iou(gt, results))
        row = object_outlines(gt, results, args.min_score)
        fractions = " | ".join(f"{row[f'iou>={t}']:.2f}" for t in OUTLINE_LEVELS)
        print(
            f"| {path} | {aps} | {row['mean_iou']:.3f} | {fractions} | "
            f"{row['area_ratio']:.3f} | {row['centroid_offset_std']:.2f} |"
        )


if __name__ == "__main__":
    main()
