"""Ties and cuts in exported graphs (DESIGN.md rule I5) and the export verifier.

* Exact ties are broken the same way (by cell index, then class) in eager PyTorch, TorchScript
  and ONNX Runtime at every cut: points-NMS, the pre-NMS candidate cut, the Matrix NMS order and
  the final top-k. Constructed for every head (all category logits equal, cuts that split the
  classes of one cell) and, with distinct masks of equal scores, for the post-processing alone.
* :func:`solo_d2.export.verify.match_detections` accepts an exchange of detections scored within
  rounding of a cut, reports it, and fails on real differences.
* A model with more candidates than ``MAX_PER_IMG`` exports and verifies through
  ``tools/export_model.py``.
"""

import os

import numpy as np
import pytest
import torch
from torch import nn

import solo_d2
from conftest import REPO, tiny_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from export_helpers import (
    MODELS,
    SHAPES_256,
    as_input,
    eager_outputs,
    load_tool,
    make_detecting,
    synthetic_image,
)
from solo_d2.export import export_onnx, export_torchscript, load_torchscript
from solo_d2.export.verify import match_detections
from solo_d2.modeling.postprocess import SOLOPostProcessor

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# ----------------------------------------------------------------------------------------------
# The verifier
# ----------------------------------------------------------------------------------------------
def _detections(boxes, scores, classes, size=32):
    """Rectangle masks [N, size, size] with their boxes, scores and classes."""
    masks = np.zeros((len(boxes), size, size), dtype=bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    return [masks, np.float32(scores), np.int64(classes), np.float32(boxes)]


BOXES = [(0, 0, 8, 8), (4, 4, 12, 12), (10, 2, 20, 9), (1, 15, 9, 30), (20, 20, 31, 31)]
EXPECTED = _detections(BOXES, [0.9, 0.8, 0.6, 0.4, 0.30000001], [0, 1, 1, 2, 0])


def _replace(detections, index, box=None, score=None, cls=None):
    masks, scores, classes, boxes = (x.copy() for x in detections)
    new = _detections([box or tuple(boxes[index].astype(int))], [scores[index]], [classes[index]])
    masks[index], boxes[index] = new[0][0], new[3][0]
    scores[index] = scores[index] if score is None else score
    classes[index] = classes[index] if cls is None else cls
    return [masks, scores, classes, boxes]


def test_verifier_accepts_an_exchange_at_the_top_k_cut_and_reports_it():
    # The last kept detection (0.30000001) and another candidate (0.3) tie within rounding at
    # MAX_PER_IMG = 5: the exported graph kept the other one.
    got = _replace(EXPECTED, 4, box=(24, 0, 30, 6), score=0.3)
    report = match_detections(EXPECTED, got, max_detections=5)
    assert report["ok"], report
    assert report["matched"] == 4 and report["exchanged"] == 2
    assert report["exchanged_scores"] == pytest.approx([0.30000001, 0.3])
    # without the cut, the same lists differ
    assert not match_detections(EXPECTED, got)["ok"]


def test_verifier_accepts_an_exchange_at_the_update_threshold():
    masks, scores, classes, boxes = EXPECTED
    extra = _detections([(24, 0, 30, 6)], [0.05000001], [1])
    got = [np.concatenate([a, b]) for a, b in zip(EXPECTED, extra)]
    assert match_detections(EXPECTED, got, score_floor=0.05)["ok"]
    assert not match_detections(EXPECTED, got)["ok"]
    assert not match_detections(EXPECTED, got, score_floor=0.2)["ok"]


@pytest.mark.parametrize(
    "change",
    [
        "exchange_away_from_the_cut",
        "class",
        "mask",
        "score",
        "missing_detection",
        "one_sided_exchange",
        "box",
    ],
)
def test_verifier_fails_on_real_differences(change):
    got = {
        # a detection far above the last kept score is replaced: not a rounding exchange
        "exchange_away_from_the_cut": lambda: _replace(EXPECTED, 2, box=(24, 0, 30, 6)),
        "class": lambda: _replace(EXPECTED, 1, cls=2),
        "mask": lambda: _replace(EXPECTED, 0, box=(0, 0, 8, 7)),  # IoU 7/8
        "score": lambda: _replace(EXPECTED, 1, score=0.79),  # 1e-2 off, beyond 1e-4 + 2e-3 * s
        "missing_detection": lambda: [x[:4] for x in EXPECTED],
        # the last detection is dropped without another one kept in its place
        "one_sided_exchange": lambda: [x[:4] for x in EXPECTED],
        "box": lambda: [*EXPECTED[:3], EXPECTED[3] + np.float32([0, 0, 1, 0])],
    }[change]()
    assert not match_detections(EXPECTED, got, max_detections=5)["ok"]


def test_verifier_tolerates_matrix_nms_rescoring_of_float_rounding_only():
    """A mask pixel within rounding of the mask threshold moves Matrix NMS decays by ~1e-3
    relative: accepted up to 2e-3, not beyond."""
    rescored = _replace(EXPECTED, 0, score=0.9 * (1 - 1e-3))
    assert match_detections(EXPECTED, rescored)["ok"]
    assert not match_detections(EXPECTED, _replace(EXPECTED, 0, score=0.9 * (1 - 5e-3)))["ok"]
    assert not match_detections(EXPECTED, rescored, score_rtol=0.0)["ok"]


# ----------------------------------------------------------------------------------------------
# Constructed ties in the whole model, every head
# ----------------------------------------------------------------------------------------------
NUM_CLASSES = 3
TIE_CUTS = ["MODEL.SOLO.NMS_PRE_TEST", "100", "MODEL.SOLO.MAX_PER_IMG", "20"]


def tied_model(name):
    """A tiny model whose category logits are all equal (zero weights, zero bias: p = 0.5 for
    every cell and class): every candidate ties with the other classes of its cell, through
    points-NMS, maskness and Matrix NMS (classes do not decay each other). 100 candidates
    before Matrix NMS and 20 detections both split the 3 classes of a cell."""
    cfg = tiny_cfg(f"configs/{name}_shapes_quick.yaml", ["MODEL.SOLO.SCORE_THRESH_TEST", "0.1"])
    cfg.merge_from_list(TIE_CUTS)
    torch.manual_seed(0)
    model = make_detecting(build_model(cfg).eval())
    with torch.no_grad():
        model.head.cate_pred.weight.zero_()
        model.head.cate_pred.bias.zero_()
    return model


@pytest.mark.parametrize("name", MODELS)
def test_exact_ties_are_broken_alike_in_eager_torchscript_and_onnx(name, tmp_path):
    model = tied_model(name)
    image = as_input(synthetic_image(128, 128, seed=3))
    masks, scores, classes, boxes = eager_outputs(model, image)
    # the constructed ties are there: 20 detections, the last tie group cut (20 = 6 x 3 + 2)
    assert len(scores) == 20
    tied_with_last = int((scores == scores[-1]).sum())
    assert tied_with_last % NUM_CLASSES != 0, scores
    # ... and broken by class order within a cell: a tie group lists its classes ascending
    for value in scores.unique():
        group = classes[scores == value]
        assert torch.equal(group, group.sort().values), (value, group)

    onnx_path = export_onnx(model, str(tmp_path / "tied.onnx"), image)
    ts_module, _ = load_torchscript(export_torchscript(model, str(tmp_path / "tied.ts"), image))
    with torch.no_grad():
        outputs = {
            "ONNX Runtime": ort.InferenceSession(onnx_path).run(None, {"image": image.numpy()}),
            "TorchScript": [o.numpy() for o in ts_module(image)],
        }
    for runtime, got in outputs.items():
        # exact agreement: no exchange is allowed (no max_detections / score_floor given)
        report = match_detections([masks, scores, classes, boxes], got)
        assert report["ok"] and report["matched"] == 20, (runtime, report)
        assert np.array_equal(got[2], classes.numpy()), runtime


# ----------------------------------------------------------------------------------------------
# Constructed ties with distinct masks: the post-processing alone
# ----------------------------------------------------------------------------------------------
GRIDS, STRIDES = (4, 2), (8, 16)
QUARTER = 16  # masks at H/4 of a 64 x 64 input


def _cell_rectangles():
    """One distinct rectangle per cell (20 cells), overlapping their neighbours: at H/4."""
    rects = []
    for cell in range(sum(s * s for s in GRIDS)):
        y0, x0 = (cell // 5) * 3, (cell % 5) * 3
        rects.append((x0, y0, x0 + 5 + cell % 2, y0 + 5 + cell % 3))
    return rects


class PostProcessOnly(nn.Module):
    """The shared SOLO post-processing on given category logits and cell mask probabilities."""

    def __init__(self, nms_pre, max_per_image):
        super().__init__()
        self.post = SOLOPostProcessor(
            num_grids=GRIDS, strides=STRIDES, nms_pre=nms_pre, max_per_image=max_per_image
        )

    def forward(self, logits_0, logits_1, cell_probs):
        offsets = (0, GRIDS[0] ** 2)

        def mask_probs(level, cells, size):
            return cell_probs[cells + offsets[level]]

        size = (4 * QUARTER, 4 * QUARTER)
        result = self.post([logits_0, logits_1], mask_probs, size, size, size)
        return result.pred_masks, result.scores, result.pred_classes, result.pred_boxes.tensor


def test_matrix_nms_and_cuts_break_exact_ties_of_distinct_masks_alike_everywhere(tmp_path):
    """All 40 candidates (20 cells x 2 classes) score exactly 0.5 * 0.75 (equal logits; masks of
    probability 0.75 inside, 0.25 outside, whose sums are exact in float32). Matrix NMS decays
    by overlap in candidate order, so its result depends on the tie-break; the 25-candidate
    pre-NMS cut and the top 17 split a tie group too."""
    probs = torch.full((20, QUARTER, QUARTER), 0.25)
    for cell, (x1, y1, x2, y2) in enumerate(_cell_rectangles()):
        probs[cell, y1:y2, x1:x2] = 0.75
    inputs = (torch.zeros(2, 4, 4), torch.zeros(2, 2, 2), probs)
    module = PostProcessOnly(nms_pre=25, max_per_image=17).eval()
    with torch.no_grad():
        masks, scores, classes, boxes = module(*inputs)
    assert len(scores) == 17 and len(scores.unique()) > 2  # Matrix NMS decayed unequally
    # Ties in cell order: the pre-NMS cut keeps cells 0..11 (both classes) and cell 12's class 0
    # only, which is the last detection
    cells = [_best_rectangle(m) for m in masks]
    assert max(cells) == 12 and cells.count(12) == 1 and cells[-1] == 12, cells
    assert classes[-1] == 0

    path = str(tmp_path / "post.onnx")
    names = ["logits_0", "logits_1", "cell_probs"]
    with torch.no_grad():
        torch.onnx.export(module, inputs, path, dynamo=False, opset_version=19, input_names=names)
        traced = torch.jit.trace(module, inputs, check_trace=False)
        got_ts = [o.numpy() for o in traced(*inputs)]
    got_onnx = ort.InferenceSession(path).run(None, dict(zip(names, (x.numpy() for x in inputs))))
    for runtime, got in {"ONNX Runtime": got_onnx, "TorchScript": got_ts}.items():
        report = match_detections([masks, scores, classes, boxes], got, score_tol=0, score_rtol=0)
        assert report["ok"] and report["matched"] == 17, (runtime, report)
        assert [_best_rectangle(m) for m in got[0]] == cells, runtime


def _best_rectangle(mask):
    """The cell whose rectangle (scaled to the full size) overlaps ``mask`` best."""
    mask = torch.as_tensor(mask)
    ious = []
    for x1, y1, x2, y2 in _cell_rectangles():
        rect = torch.zeros_like(mask)
        rect[4 * y1 : 4 * y2, 4 * x1 : 4 * x2] = True
        ious.append(float((rect & mask).sum()) / float((rect | mask).sum()))
    return int(np.argmax(ious))


# ----------------------------------------------------------------------------------------------
# More candidates than MAX_PER_IMG: the export tool verifies
# ----------------------------------------------------------------------------------------------
def test_export_tool_verifies_a_model_with_more_candidates_than_max_per_img(tmp_path):
    """The reported case: Decoupled SOLO Light (shapes quick config, random weights) with 100
    detections on a 256 x 256 picture, thousands of candidates of close scores."""
    import cv2

    from detectron2.checkpoint import DetectionCheckpointer

    config = os.path.join(REPO, "configs/Decoupled_SOLO_Light_shapes_quick.yaml")
    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(SHAPES_256)
    torch.manual_seed(5)
    model = make_detecting(build_model(cfg).eval(), cate_bias=-2.0)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    image_path = str(tmp_path / "picture.png")
    cv2.imwrite(image_path, synthetic_image(256, 256, seed=5))
    with torch.no_grad():
        eager = model([{"image": as_input(synthetic_image(256, 256, seed=5))}])[0]["instances"]
    assert len(eager) == cfg.MODEL.SOLO.MAX_PER_IMG  # the top-k cut is reached
    result = load_tool("export_model").main(
        ["--config-file", config, "--output", str(tmp_path / "out"), "--sample-image"]
        + [image_path, "MODEL.WEIGHTS", str(tmp_path / "model.pth")]
        + SHAPES_256
    )
    assert result["verify"]["ok"], result["verify"]
    assert result["verify"]["num_got"] == cfg.MODEL.SOLO.MAX_PER_IMG
