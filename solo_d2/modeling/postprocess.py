"""SOLO inference (DESIGN.md rules I1-I7 and M1-M2).

:class:`SOLOPostProcessor` is the whole recipe for one image: points-NMS, candidate selection,
one mask per candidate cell (from a head-specific callback), binarisation, the area filter,
maskness rescoring, Matrix NMS, top-k and mask pasting. The steps are pure tensor functions
below, testable alone.

The same code is traced into the exported graphs (:mod:`solo_d2.export`): where a step has a
faster eager form that cannot be traced (a Python loop or branch on the number of candidates,
which may be 0), it takes its graph form while :func:`~.layers.is_exporting` is true, with the
same result (DESIGN.md section 1, "Export").
"""

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

from .layers import is_exporting
from .mask_ops import count_pixels

__all__ = [
    "MaskProbs",
    "SOLOPostProcessor",
    "points_nms",
    "matrix_nms",
    "select_candidates",
    "binarize_with_maskness",
    "resize_masks",
    "peak_components",
    "mask_boxes",
]

#: Head-specific mask probabilities of requested cells: ``(level, cells, size)`` with Long[K]
#: flat cell indices ``i * S + j`` of that level -> Float[K, *size] (bilinear to ``size``).
MaskProbs = Callable[[int, torch.Tensor, Tuple[int, int]], torch.Tensor]


def points_nms(heat: torch.Tensor, kernel: int = 2) -> torch.Tensor:
    """Keep cells equal to the max of their 2x2 window (themselves, top, left, top-left).

    Args:
        heat: Float[B, C, S, S] category probabilities.
    Returns:
        Float[B, C, S, S]: ``heat`` with non-maximal cells set to 0.
    """
    if kernel != 2:
        raise ValueError(f"points_nms supports kernel=2 (the SOLO setting), got {kernel}")
    window_max = F.max_pool2d(heat, kernel, stride=1, padding=1)[:, :, :-1, :-1]
    return heat * (window_max == heat)


def matrix_nms(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_areas: torch.Tensor = None,
) -> torch.Tensor:
    """Matrix NMS: decay each score by its overlap with higher-scored masks of the same label.

    Args:
        masks: Bool[N, H, W] binary masks, **sorted by score, descending**.
        labels: Long[N].
        scores: Float[N].
        kernel: "gaussian" (``exp(-sigma * iou^2)``) or "linear" (``1 - iou``).
        mask_areas: optional Float[N] pixel counts of ``masks``.
    Returns:
        Float[N] decayed scores (empty for empty input). Empty or duplicate masks give no NaN.
    """
    exporting = is_exporting()
    if not exporting and len(labels) == 0:
        return scores.new_zeros((0,))
    flat = masks.flatten(1)
    if mask_areas is None:
        mask_areas = flat.to(scores.dtype).sum(dim=1)
    # Only same-label overlaps are used: one small product per label instead of N x N (the
    # counts are exact integers either way). The exported graph has no loop over the labels
    # present: one N x N product, of which the same-label entries are used below.
    if exporting:
        flat = flat.to(scores.dtype)
        inter = flat @ flat.t()
    else:
        num = len(labels)
        inter = scores.new_zeros((num, num))
        for label in labels.unique():
            group = (labels == label).nonzero()[:, 0]
            group_masks = flat[group].to(scores.dtype)
            inter[group[:, None], group[None, :]] = group_masks @ group_masks.t()
    union = mask_areas[:, None] + mask_areas[None, :] - inter
    same_label = labels[:, None] == labels[None, :]
    # iou[i, j] for i < j with the same label, else 0. An empty union means no overlap.
    iou = torch.where(same_label, inter / union.clamp(min=1e-6), torch.zeros_like(inter)).triu(
        diagonal=1
    )
    # comp[i]: the largest IoU of mask i with any higher-scored mask, i.e. how suppressed i is.
    compensate = _column_reduce(iou, "max", exporting)[:, None]
    if kernel == "gaussian":
        decay = torch.exp(-sigma * iou.pow(2)) / torch.exp(-sigma * compensate.pow(2))
    elif kernel == "linear":
        decay = (1 - iou) / (1 - compensate).clamp(min=1e-6)
    else:
        raise ValueError(f"Unknown Matrix NMS kernel {kernel!r}; use 'gaussian' or 'linear'")
    return scores * _column_reduce(decay, "min", exporting)


def _column_reduce(matrix: torch.Tensor, how: str, exporting: bool) -> torch.Tensor:
    """max / min over dim 0 of Float[N, N]. A reduction over an empty dim fails in torch, so
    the traced form reduces with one more, neutral row (N may be 0 there)."""
    if exporting:
        row = matrix.sum(dim=0, keepdim=True)  # [1, N] for every N
        neutral = torch.full_like(row, 0.0 if how == "max" else float("inf"))
        matrix = torch.cat([matrix, neutral])
    return matrix.max(dim=0).values if how == "max" else matrix.min(dim=0).values


def select_candidates(cate_probs: torch.Tensor, score_thresh: float) -> Tuple[torch.Tensor, ...]:
    """(cell, class) pairs above the score threshold.

    Args:
        cate_probs: Float[M, C] points-NMSed category probabilities of all cells of one image.
    Returns:
        (cells Long[K], classes Long[K], scores Float[K]), ordered by cell then class.
    """
    cells, classes = (cate_probs > score_thresh).nonzero(as_tuple=True)
    return cells, classes, cate_probs[cells, classes]


def binarize_with_maskness(mask_probs: torch.Tensor, mask_thresh: float):
    """Binary masks, their areas and maskness (mean probability inside the binary mask).

    Args:
        mask_probs: Float[K, h, w].
    Returns:
        (Bool[K, h, w], Float[K] pixel counts, Float[K] maskness; 0 for empty masks).
    """
    binary = mask_probs > mask_thresh
    # Exact counts and the masked sum, without float / int64 copies of the binary masks.
    areas = count_pixels(binary, 2).sum(dim=1).to(mask_probs.dtype)
    maskness = torch.where(binary, mask_probs, 0.0).sum(dim=(1, 2)) / areas.clamp(min=1)
    return binary, areas, maskness


def peak_components(mask_probs: torch.Tensor, mask_thresh: float) -> torch.Tensor:
    """The 8-connected part of each binary mask (probability > ``mask_thresh``) that holds the
    mask's highest probability.

    A flood fill from each mask's peak pixel, all masks at once: the region grows by a 3x3 max
    pool within the binary mask until it stops changing (as many passes as the part's geodesic
    radius, in mask pixels, plus one). A mask without pixels above the threshold stays empty.

    Args:
        mask_probs: Float[K, h, w].
    Returns:
        Bool[K, h, w].
    """
    if is_exporting():
        raise NotImplementedError(
            "MODEL.SOLO.KEEP_PEAK_COMPONENT_TEST has no graph form (its flood fill runs until "
            "it converges): export with it False"
        )
    binary = mask_probs > mask_thresh
    num = len(mask_probs)
    if num == 0:
        return binary
    flat = binary.flatten(1)
    peaks = mask_probs.flatten(1).argmax(dim=1)
    seeds = torch.zeros_like(flat)
    rows = torch.arange(num, device=flat.device)
    seeds[rows, peaks] = flat[rows, peaks]
    region = seeds.view_as(binary)
    while True:
        grown = F.max_pool2d(region.to(mask_probs.dtype)[:, None], 3, stride=1, padding=1)
        grown = (grown[:, 0] > 0) & binary
        if torch.equal(grown, region):
            return region
        region = grown


def resize_masks(
    mask_probs: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    mask_thresh: float,
    chunk: int = 4,
    max_masks: int = None,
) -> torch.Tensor:
    """Soft masks at H/4 -> binary masks at the output size (rule I6).

    Resize to the padded input size, crop the valid ``image_size``, resize to ``output_size``
    (skipped when it is the crop's size: an identity), threshold. Runs on chunks of ``chunk``
    masks, so that only one chunk of full-resolution float masks exists at a time (the output is
    Bool). The exported graph (K, possibly 0, unknown while tracing) has no loop over the chunks
    (an ONNX ``Loop`` runs slowly): it holds ``ceil(max_masks / chunk)`` chunks one after the
    other, the slices past K being empty; without ``max_masks`` it resizes all K at once.

    Args:
        mask_probs: Float[K, h, w]; at most ``max_masks`` when exporting.
    Returns:
        Bool[K, *output_size].
    """
    if is_exporting():
        if max_masks is None:
            bounds = [(0, None)]
        else:
            bounds = [(start, start + chunk) for start in range(0, max_masks, chunk)]
        parts = [
            _resize_and_threshold(
                mask_probs[a:b], padded_size, image_size, output_size, mask_thresh
            )
            for a, b in bounds
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    if len(mask_probs) == 0:
        return mask_probs.new_zeros((0, *output_size), dtype=torch.bool)
    binary = mask_probs.new_empty((len(mask_probs), *output_size), dtype=torch.bool)
    for start in range(0, len(mask_probs), chunk):
        probs = mask_probs[start : start + chunk]
        masks = F.interpolate(probs[None], size=padded_size, mode="bilinear", align_corners=False)
        masks = masks[:, :, : image_size[0], : image_size[1]]
        if tuple(masks.shape[-2:]) != tuple(output_size):
            masks = F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)
        torch.gt(masks[0], mask_thresh, out=binary[start : start + chunk])
    return binary


def _resize_and_threshold(mask_probs, padded_size, image_size, output_size, thresh):
    """The graph form of one chunk of :func:`resize_masks`: K (possibly 0) masks as the batch
    dim (see ``resize_probs``), thresholded before the crop, which then copies bytes, not
    floats."""
    masks = F.interpolate(
        mask_probs[:, None], size=padded_size, mode="bilinear", align_corners=False
    )
    if tuple(output_size) != tuple(image_size):
        masks = masks[:, :, : image_size[0], : image_size[1]]
        masks = F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)
        return (masks > thresh).flatten(0, 1)
    return (masks > thresh).flatten(0, 1)[:, : image_size[0], : image_size[1]]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of Bool[N, H, W] masks (x2 = max x + 1, rule I7), Float[N, 4]; an empty
    mask gets (0, 0, 0, 0). Equal to Detectron2's ``BitMasks.get_bounding_boxes``, without its
    loop over the masks."""
    height, width = masks.shape[-2:]
    # any() as a max of bytes: ~20x faster than Tensor.any on the CPU (a cast in the graph).
    data = masks.to(torch.uint8) if is_exporting() else masks.view(torch.uint8)
    x_any, y_any = data.amax(dim=1) > 0, data.amax(dim=2) > 0  # [N, W], [N, H]
    xs = torch.arange(width, device=masks.device, dtype=torch.float32)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32)
    boxes = torch.stack(
        [
            torch.where(x_any, xs, torch.full_like(xs, float("inf"))).min(dim=1).values,
            torch.where(y_any, ys, torch.full_like(ys, float("inf"))).min(dim=1).values,
            torch.where(x_any, xs + 1, torch.zeros_like(xs)).max(dim=1).values,
            torch.where(y_any, ys + 1, torch.zeros_like(ys)).max(dim=1).values,
        ],
        dim=1,
    )
    return torch.where(x_any.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``scores`` descending, ties in input order (a stable sort). ONNX has no
    stable sort: the exported sort is ONNX TopK, which breaks ties by the lower index too."""
    if torch.onnx.is_in_onnx_export():
        return scores.sort(descending=True).indices
    return scores.sort(descending=True, stable=True).indices


@dataclass
class SOLOPostProcessor:
    """SOLO inference for one image (rules I1-I7), with the thresholds of ``MODEL.SOLO``.

    Attributes:
        num_grids: S per level; strides: head stride per level (the area filter of rule I3).
        score_thresh, mask_thresh, nms_pre, update_thresh, nms_kernel, nms_sigma,
        max_per_image: ``MODEL.SOLO.*_TEST`` / ``NMS_*`` / ``MAX_PER_IMG``.
        mask_area_factor: ``MASK_AREA_FACTOR_TEST``: a mask is kept when its pixel count at
            H/4 exceeds this times its level's stride (rule I3; 1 as the original).
        mask_stride: the head's mask resolution (4: H/4; SOLOv2 ``MASK_FEATURE_STRIDE 2``: H/2);
            areas are counted in H/4 pixels whatever it is.
        keep_peak_component: ``KEEP_PEAK_COMPONENT_TEST``: each output mask keeps only its
            connected part around its highest probability (:func:`peak_components`).
    """

    num_grids: Sequence[int]
    strides: Sequence[int]
    score_thresh: float = 0.1
    mask_thresh: float = 0.5
    nms_pre: int = 500
    update_thresh: float = 0.05
    nms_kernel: str = "gaussian"
    nms_sigma: float = 2.0
    max_per_image: int = 100
    mask_area_factor: float = 1.0
    mask_stride: int = 4
    keep_peak_component: bool = False

    def candidates(self, cate_logits: List[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Rules I1-I2: (cell, class) pairs above the score threshold after points-NMS.

        Args:
            cate_logits: per level Float[C, S, S] category logits of one image.
        Returns:
            (cells Long[K] global over levels, classes Long[K], scores Float[K]).
        """
        cate_probs = torch.cat(
            [points_nms(logits[None].sigmoid())[0].flatten(1).t() for logits in cate_logits]
        )  # [sum S^2, C]
        return select_candidates(cate_probs, self.score_thresh)

    def cell_mask_probs(
        self, cells: torch.Tensor, mask_probs: MaskProbs, size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask probabilities of global cell indices ``cells`` (ascending), one level at a time.

        Returns (Float[U, *size], Float[U] head stride of each cell's level).
        """
        sizes = torch.tensor([s * s for s in self.num_grids], device=cells.device)
        ends = torch.cumsum(sizes, 0)
        levels = (cells[:, None] >= ends).sum(dim=1)  # bucketize(right=True), with a graph form
        exporting = is_exporting()
        probs = []
        for level in range(len(self.num_grids)):
            local = cells[levels == level] - (ends[level] - sizes[level])
            if exporting or len(local):  # the exported graph asks every level (K may be 0)
                probs.append(mask_probs(level, local, size))
        strides = torch.tensor(self.strides, device=cells.device, dtype=torch.float32)[levels]
        if not probs:
            return torch.zeros((0, *size), device=cells.device), strides
        return torch.cat(probs), strides

    def __call__(
        self,
        cate_logits: List[torch.Tensor],
        mask_probs: MaskProbs,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image as ``Instances`` of ``output_size`` (rules I1-I7).

        Args:
            cate_logits: per level Float[C, S, S] category logits of the image.
            mask_probs: the head's :data:`MaskProbs` for this image.
            padded_size: (H, W) of the padded input; image_size: its valid part;
            output_size: size of the returned masks (the original image).
        """
        cells, classes, scores = self.candidates(cate_logits)
        # A mask depends on the cell only: compute it once per candidate cell, at H/4 (or at
        # the head's finer mask stride).
        unique_cells, pair_to_cell = cells.unique(return_inverse=True)
        stride = self.mask_stride
        mask_size = (padded_size[0] // stride, padded_size[1] // stride)
        cell_probs, cell_strides = self.cell_mask_probs(unique_cells, mask_probs, mask_size)
        binary, areas, maskness = binarize_with_maskness(cell_probs, self.mask_thresh)
        # I3's bound is in pixels at H/4
        quarter_areas = areas if stride == 4 else areas * (stride / 4) ** 2

        # I3-I4: drop masks with no more pixels than their level's stride (times the factor),
        # rescore by maskness.
        keep = (quarter_areas > cell_strides * self.mask_area_factor)[pair_to_cell]
        pair_to_cell, classes = pair_to_cell[keep], classes[keep]
        scores = scores[keep] * maskness[pair_to_cell]
        # I5: top nms_pre, Matrix NMS, update threshold, top max_per_image.
        order = _descending_order(scores)[: self.nms_pre]
        pair_to_cell, classes, scores = pair_to_cell[order], classes[order], scores[order]
        scores = matrix_nms(
            binary[pair_to_cell],
            classes,
            scores,
            self.nms_kernel,
            self.nms_sigma,
            areas[pair_to_cell],
        )
        keep = (scores >= self.update_thresh).nonzero()[:, 0]
        order = keep[_descending_order(scores[keep])[: self.max_per_image]]
        # I6-I7: paste the soft masks, tight boxes.
        kept_probs = cell_probs[pair_to_cell[order]]
        if self.keep_peak_component:
            # Only the pixels above the threshold outside the part are cleared: the resize
            # then draws the part's outline as it would without the other parts.
            stray = (kept_probs > self.mask_thresh) & ~peak_components(
                kept_probs, self.mask_thresh
            )
            kept_probs = kept_probs.masked_fill(stray, 0.0)
        masks = resize_masks(
            kept_probs,
            padded_size,
            image_size,
            output_size,
            self.mask_thresh,
            max_masks=self.max_per_image,
        )
        result = Instances(output_size)
        result.pred_masks = masks
        result.scores = scores[order]
        result.pred_classes = classes[order]
        result.pred_boxes = Boxes(mask_boxes(masks))
        return result
