"""Property-based tests (hypothesis) of target assignment and inference post-processing.

Random images of any size (multiples of 32 from 32 to 1344, any aspect ratio) with 0 to 300
instances of every awkward kind: empty, one pixel, thin lines, full image, touching the border,
boxes that disagree with their masks, zero-width / zero-height boxes, duplicates. Derandomized
(the same examples in every run), with a bounded number of examples so the suite stays fast.
"""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solo_d2.modeling.postprocess import SOLOPostProcessor
from solo_d2.modeling.targets import (
    DEFAULT_NUM_GRIDS,
    DEFAULT_SCALE_RANGES,
    DEFAULT_STRIDES,
    build_solo_targets,
    build_solov2_targets,
)
from test_targets import _np_cell

NUM_CLASSES = 5
MASK_BYTES = 3_000_000  # instances x H x W per example, to keep each example fast
KINDS = ["empty", "pixel", "hline", "vline", "full", "border", "blob", "bad_box", "flat_box"]
SETTINGS = settings(
    derandomize=True,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def images_with_instances(draw):
    height = 32 * draw(st.integers(1, 42))
    width = 32 * draw(st.integers(1, 42))
    count = draw(st.integers(0, min(300, MASK_BYTES // (height * width))))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=count, max_size=count))
    duplicates = draw(st.integers(0, count // 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = np.zeros((count, height, width), dtype=bool)
    boxes = np.zeros((count, 4), dtype=np.float32)
    for n, kind in enumerate(kinds):
        y, x = rng.integers(0, height), rng.integers(0, width)
        if kind == "pixel":
            masks[n, y, x] = True
        elif kind == "hline":
            masks[n, y, x : x + rng.integers(1, width + 1)] = True
        elif kind == "vline":
            masks[n, y : y + rng.integers(1, height + 1), x] = True
        elif kind == "full":
            masks[n] = True
        elif kind in ("border", "blob", "bad_box", "flat_box"):
            y, x = (0, 0) if kind == "border" else (y, x)
            masks[n, y : y + rng.integers(1, height), x : x + rng.integers(1, width)] = True
        ys, xs = np.nonzero(masks[n])
        if len(ys):
            boxes[n] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if kind == "bad_box":  # a box that has nothing to do with the mask
            x1, y1 = rng.uniform(-50, width), rng.uniform(-50, height)
            boxes[n] = [x1, y1, x1 + rng.uniform(0, 2 * width), y1 + rng.uniform(0, 2 * height)]
        elif kind == "flat_box":
            boxes[n, 2] = boxes[n, 0]  # zero width
    for n in range(duplicates):  # duplicated instances
        masks[count - 1 - n], boxes[count - 1 - n] = masks[n], boxes[n]
    classes = rng.integers(0, NUM_CLASSES, count)
    return torch.from_numpy(boxes), torch.from_numpy(classes), torch.from_numpy(masks)


def centre_region(box, mask, size, num_grid, sigma=0.2):
    """Rules T2-T4, evaluated independently in NumPy float32: (top, down, left, right)."""
    f32 = np.float32
    height, width = size
    ys, xs = np.nonzero(mask)
    cy, cx = f32(ys.sum() / len(ys)), f32(xs.sum() / len(xs))
    x1, y1, x2, y2 = (f32(v) for v in box)
    half_w, half_h = f32(0.5) * (x2 - x1) * f32(sigma), f32(0.5) * (y2 - y1) * f32(sigma)
    ci, cj = _np_cell(cy, height, num_grid), _np_cell(cx, width, num_grid)
    return (
        max(0, _np_cell(cy - half_h, height, num_grid), ci - 1),
        min(num_grid - 1, _np_cell(cy + half_h, height, num_grid), ci + 1),
        max(0, _np_cell(cx - half_w, width, num_grid), cj - 1),
        min(num_grid - 1, _np_cell(cx + half_w, width, num_grid), cj + 1),
    )


@SETTINGS
@given(images_with_instances(), st.booleans())
def test_targets_hold_their_contracts(case, solov2):
    boxes, classes, masks = case
    size = tuple(masks.shape[1:])
    build = build_solov2_targets if solov2 else build_solo_targets
    levels = build(boxes, classes, masks, size, num_classes=NUM_CLASSES)
    assert len(levels) == len(DEFAULT_NUM_GRIDS)
    sqrt_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    pixels = masks.flatten(1).sum(1)
    for level, num_grid, (lower, upper), stride in zip(
        levels, DEFAULT_NUM_GRIDS, DEFAULT_SCALE_RANGES, DEFAULT_STRIDES
    ):
        out = 4 if solov2 else stride // 2
        assert level.cate.shape == (num_grid, num_grid) and level.cate.dtype == torch.int64
        assert level.pos.dtype == level.gt.dtype == torch.int64
        assert level.pos.shape == level.gt.shape
        assert level.masks.dtype == torch.bool
        assert level.masks.shape == (len(classes), size[0] // out, size[1] // out)
        pairs = list(zip(level.gt.tolist(), level.pos.tolist()))
        assert len(set(pairs)) == len(pairs)
        if not solov2:
            assert len(set(level.pos.tolist())) == len(pairs)  # one sample per cell
        for gt, cell in pairs:
            assert lower <= float(sqrt_area[gt]) <= upper and pixels[gt] >= 10
            top, down, left, right = centre_region(boxes[gt], masks[gt].numpy(), size, num_grid)
            assert top <= cell // num_grid <= down and left <= cell % num_grid <= right
        # categories: exactly the positive cells are foreground
        foreground = (level.cate != NUM_CLASSES).flatten().nonzero()[:, 0].tolist()
        assert foreground == sorted(set(level.pos.tolist()))
        if pairs:
            assert level.cate.flatten()[level.pos].tolist() == [
                int(classes[max(g for g, c in pairs if c == cell)]) for cell in level.pos.tolist()
            ]


@st.composite
def head_outputs(draw):
    height, width = 32 * draw(st.integers(1, 24)), 32 * draw(st.integers(1, 24))
    valid = (draw(st.integers(1, height)), draw(st.integers(1, width)))
    output = (draw(st.integers(1, 2 * valid[0])), draw(st.integers(1, 2 * valid[1])))
    mode = draw(st.sampled_from(["random", "equal", "extreme", "identical_masks"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grids = (8, 6, 5, 4, 3)
    scale = 1e4 if mode == "extreme" else 3.0
    cate = [torch.from_numpy(rng.normal(0, scale, (3, s, s)).astype(np.float32)) for s in grids]
    if mode == "equal":
        cate = [torch.full_like(c, 0.5) for c in cate]
    quarter = (height // 4, width // 4)
    base = rng.uniform(0, 1, quarter).astype(np.float32)
    seeds = rng.integers(0, 2**31, 1000)

    def mask_probs(level, cells, size):
        if mode == "identical_masks":
            probs = torch.from_numpy(base).expand(len(cells), -1, -1)
        else:
            probs = (
                torch.stack(
                    [
                        torch.from_numpy(
                            np.random.default_rng(seeds[int(c) % 1000] + level)
                            .uniform(0, 1, quarter)
                            .astype(np.float32)
                        )
                        for c in cells
                    ]
                )
                if len(cells)
                else torch.zeros((0, *quarter))
            )
            if mode == "extreme":
                probs = (probs - 0.5).mul(1e4).sigmoid()
        return torch.nn.functional.interpolate(probs[None], size=size)[0]

    return cate, mask_probs, (height, width), valid, output, grids


@SETTINGS
@given(head_outputs())
def test_inference_returns_valid_instances(outputs):
    cate, mask_probs, padded, valid, output, grids = outputs
    post = SOLOPostProcessor(num_grids=grids, strides=(8, 8, 16, 32, 32), max_per_image=50)
    result = post(cate, mask_probs, padded, valid, output)
    n = len(result)
    assert result.image_size == output and n <= 50
    assert result.pred_masks.shape == (n, *output) and result.pred_masks.dtype == torch.bool
    scores = result.scores
    assert torch.isfinite(scores).all() and ((scores > 0) & (scores <= 1)).all()
    assert torch.equal(scores, scores.sort(descending=True).values)
    assert ((result.pred_classes >= 0) & (result.pred_classes < 3)).all()
    boxes = result.pred_boxes.tensor
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= output[1]).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= output[0]).all()
