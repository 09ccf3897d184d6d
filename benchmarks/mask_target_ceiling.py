"""How well a *perfect* prediction of a mask target can outline the gt objects.

    python -m benchmarks.mask_target_ceiling --dataset shapes_dense_val --strides 1 2 4

For every gt mask of the dataset (Bool[H, W] at the input size), the mask target at stride s
is taken as the predicted probabilities and turned back into a mask the way inference does
(bilinear resize to the input size, then ``>= MASK_THRESH_TEST``, 0.5), for each of the
targets of ``MODEL.SOLO.MASK_TARGET`` (:func:`solo_d2.modeling.targets.downsample_masks`,
DESIGN.md rule T6): "binary" (the original: a pixel exactly half covered is 1), "half_ties"
(0.5 there) and "area" (the fraction of each target pixel's s x s input pixels that the mask
covers). Prints, per target and stride, the mean mask IoU of these masks with the gt and the
fraction of objects whose IoU reaches 0.75 / 0.85 / 0.95: an upper bound on the outlines a
model trained on those targets can draw, and the mean ratio of the drawn masks' pixel count to
the gt's (above 1: the target draws objects too large).
"""

import argparse
from typing import Dict, Iterator

import torch
import torch.nn.functional as F

import solo_d2  # noqa: F401  (registers the shapes datasets)
from detectron2.data import DatasetCatalog
from detectron2.structures import polygons_to_bitmask
from solo_d2.modeling.targets import MASK_TARGET_MODES, downsample_masks

__all__ = ["gt_masks", "ceiling"]

IOU_LEVELS = (0.75, 0.85, 0.95)


def gt_masks(dataset: str) -> Iterator[torch.Tensor]:
    """Bool[N, H, W] gt masks of each image of ``dataset`` (polygon annotations)."""
    for record in DatasetCatalog.get(dataset):
        height, width = record["height"], record["width"]
        masks = [
            torch.from_numpy(polygons_to_bitmask(a["segmentation"], height, width))
            for a in record["annotations"]
            if not a.get("iscrowd", 0)
        ]
        if masks:
            yield torch.stack(masks)


def ceiling(dataset: str, stride: int, target: str, mask_threshold: float = 0.5) -> Dict:
    """Mean IoU and the fraction of objects at each of :data:`IOU_LEVELS` of the drawn
    ``target`` (a ``MODEL.SOLO.MASK_TARGET``, see the module doc)."""
    ious, area_ratios = [], []
    for masks in gt_masks(dataset):
        height, width = masks.shape[-2:]
        pad_h, pad_w = -height % stride, -width % stride  # inputs pad to the stride
        padded = F.pad(masks, (0, pad_w, 0, pad_h))
        values = downsample_masks(padded, stride, target).float()
        probs = F.interpolate(
            values[:, None], scale_factor=stride, mode="bilinear", align_corners=False
        )[:, 0, :height, :width]
        drawn = probs >= mask_threshold
        inter = (drawn & masks).flatten(1).sum(1)
        union = (drawn | masks).flatten(1).sum(1).clamp(min=1)
        ious.append(inter / union)
        area_ratios.append(drawn.flatten(1).sum(1) / masks.flatten(1).sum(1).clamp(min=1))
    ious = torch.cat(ious)
    row = {"objects": len(ious), "mean_iou": ious.mean().item()}
    row["area_ratio"] = torch.cat(area_ratios).float().mean().item()
    row.update({f"iou>={t}": (ious >= t).float().mean().item() for t in IOU_LEVELS})
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="shapes_dense_val")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args(argv)
    levels = " | ".join(f"IoU >= {t}" for t in IOU_LEVELS)
    print(f"| stride | target | objects | mean IoU | {levels} | area ratio |")
    print("|---|---|---|---|" + "---|" * (len(IOU_LEVELS) + 1))
    for stride in args.strides:
        for target in MASK_TARGET_MODES:
            row = ceiling(args.dataset, stride, target)
            fractions = " | ".join(f"{row[f'iou>={t}']:.2f}" for t in IOU_LEVELS)
            print(
                f"| {stride} | {target} | {row['objects']} | {row['mean_iou']:.3f} | {fractions} "
                f"| {row['area_ratio']:.3f} |"
            )


if __name__ == "__main__":
    main()
