"""The SOLO meta-architecture: training/inference contract, positive-only == dense, checkpoints."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import make_input, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Instances
from solo_d2.modeling.losses import dice_loss
from solo_d2.modeling.meta_arch import gt_bitmasks

BOXES_A = [[4, 6, 30, 40], [20, 10, 60, 50], [40, 30, 78, 62]]
BOXES_B = [[10, 12, 26, 28]]


def training_batch(mask_format="bitmask"):
    return [
        make_input(BOXES_A, [0, 1, 2], mask_format=mask_format, seed=1),
        make_input([], [], mask_format=mask_format, seed=2),  # image without gt
        make_input(BOXES_B, [2], mask_format=mask_format, seed=3),
    ]


@pytest.mark.parametrize("mask_format", ["bitmask", "polygon"])
def test_training_losses_and_gradients_reach_every_parameter(tiny_model, mask_format):
    tiny_model.train()
    losses = tiny_model(training_batch(mask_format))
    assert set(losses) == {"loss_ins", "loss_cate"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    # Every parameter gets a gradient (DistributedDataParallel without find_unused_parameters).
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_polygon_and_bitmask_give_the_same_loss(tiny_model):
    tiny_model.train()
    torch.manual_seed(0)
    bitmask = tiny_model(training_batch("bitmask"))
    polygon = tiny_model(training_batch("polygon"))
    for key in bitmask:
        assert torch.allclose(bitmask[key], polygon[key], atol=1e-6), key


def test_batch_without_any_gt_trains(tiny_model):
    """Rule L3: no positives -> loss_ins is a graph-connected zero."""
    tiny_model.train()
    losses = tiny_model([make_input([], [], seed=5), make_input([], [], seed=6)])
    assert losses["loss_ins"].item() == 0.0 and losses["loss_ins"].requires_grad
    assert losses["loss_cate"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in tiny_model.parameters() if p.requires_grad)


def test_wrong_class_ids_name_the_image(tiny_model):
    tiny_model.train()
    with pytest.raises(ValueError, match=r"synthetic_7\.png.*NUM_CLASSES is 3"):
        tiny_model([make_input(BOXES_B, [3], seed=7)])


def test_gt_bitmasks_pads_polygons_and_bitmasks_alike():
    bitmask = make_input(BOXES_A, [0, 1, 2], mask_format="bitmask")["instances"]
    polygon = make_input(BOXES_A, [0, 1, 2], mask_format="polygon")["instances"]
    a, b = gt_bitmasks(bitmask, (96, 96)), gt_bitmasks(polygon, (96, 96))
    assert a.shape == b.shape == (3, 96, 96) and a.dtype == b.dtype == torch.bool
    assert torch.equal(a, b)
    assert not a[:, 64:].any() and not a[:, :, 80:].any()  # zero padding
    empty = make_input([], [], mask_format=None)["instances"]
    assert gt_bitmasks(empty, (96, 96)).shape == (0, 96, 96)


def dense_mask_loss(model, batch):
    """SOLO loss_ins the original way: all S^2 mask channels and dense S^2 x h x w targets."""
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    outputs = model.head([features[f] for f in model.in_features])
    padded = images.tensor.shape[-2:]
    dice = []
    for level, num_grid in enumerate(model.num_grids):
        conv = model.head.mask_preds[level]
        all_probs = conv(outputs.mask_data[level]).sigmoid()  # [B, S^2, h, w]
        for b, x in enumerate(batch):
            level_targets = model.build_targets(x, padded)[level]
            dense = torch.zeros_like(all_probs[b], dtype=torch.bool)  # [S^2, h, w]
            positive = torch.zeros(num_grid * num_grid, dtype=torch.bool)
            dense[level_targets.pos] = level_targets.masks[level_targets.gt]
            positive[level_targets.pos] = True
            dice.append(dice_loss(all_probs[b][positive], dense[positive]))
    dice = torch.cat(dice)
    return model.dice_weight * dice.sum() / max(len(dice), 1)


def test_positive_only_mask_loss_equals_dense_all_channel_loss(tiny_model):
    tiny_model.train()
    batch = training_batch()
    torch.manual_seed(0)
    sparse = tiny_model(batch)["loss_ins"]
    dense = dense_mask_loss(tiny_model, batch)
    assert sparse.item() > 0
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-6)


def test_candidate_masks_equal_dense_masks(tiny_model):
    """Inference computes masks only for candidate cells; they equal the all-channel masks."""
    tiny_model.eval()
    batch = training_batch()
    with torch.no_grad():
        images = tiny_model.preprocess_image(batch)
        features = tiny_model.backbone(images.tensor)
        outputs = tiny_model.head([features[f] for f in tiny_model.in_features])
        padded = tuple(images.tensor.shape[-2:])
        out_size = (padded[0] // 4, padded[1] // 4)
        dense = []
        for level, conv in enumerate(tiny_model.head.mask_preds):
            probs = conv(outputs.mask_data[level][1:2]).sigmoid()
            dense.append(
                F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)[0]
            )
        dense = torch.cat(dense)
        cells = torch.tensor([0, 5, 63, 64, 99, 100, 140, 141, len(dense) - 1])
        sparse, strides = tiny_model.post_processor.cell_mask_probs(
            cells,
            lambda level, local, size: tiny_model.head.mask_probs(
                outputs, level, torch.ones_like(local), local, size
            ),
            out_size,
        )
    assert torch.allclose(sparse, dense[cells], atol=1e-6)
    assert strides.tolist() == [8, 8, 8, 8, 8, 16, 32, 32, 32]


def make_predictions_visible(model):
    """Random-init masks are ~0.01 everywhere; give them varied logits around 0 and keep every
    score, so that inference returns instances."""
    torch.manual_seed(0)
    for conv in model.head.mask_preds:
        torch.nn.init.normal_(conv.weight, std=0.5)
        torch.nn.init.constant_(conv.bias, 0.5)
    model.post_processor.update_thresh = 0.0


def test_inference_output_format(tiny_model):
    tiny_model.eval()
    make_predictions_visible(tiny_model)
    inputs = [make_input(BOXES_A, [0, 1, 2], seed=1), make_input(BOXES_B, [2], seed=2)]
    inputs[1]["height"], inputs[1]["width"] = 128, 160  # ask for a larger output size
    with torch.no_grad():
        results = tiny_model(inputs)
    assert len(results) == 2
    for result, size in zip(results, [(64, 80), (128, 160)]):
        instances = result["instances"]
        assert isinstance(instances, Instances) and instances.image_size == size
        assert set(instances.get_fields()) == {"pred_masks", "scores", "pred_classes", "pred_boxes"}
        n = len(instances)
        # SCORE_THRESH_TEST 0 in the tiny config
        assert 0 < n <= tiny_model.post_processor.max_per_image
        assert instances.pred_masks.shape == (n, *size) and instances.pred_masks.dtype == torch.bool
        assert (
            instances.pred_classes.max() < 3
            and (instances.scores[:-1] >= instances.scores[1:]).all()
        )
        # Boxes are the tight boxes of the masks (x2 = max_x + 1).
        k = int(instances.pred_masks.flatten(1).any(1).nonzero()[0])
        ys, xs = instances.pred_masks[k].nonzero(as_tuple=True)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert instances.pred_boxes.tensor[k].tolist() == [float(v) for v in expected]


def test_inference_without_candidates_returns_empty_instances(tiny_model):
    tiny_model.eval()
    tiny_model.post_processor.score_thresh = 1.0  # no category probability exceeds 1
    with torch.no_grad():
        (result,) = tiny_model([make_input(BOXES_B, [0], seed=3)])
    instances = result["instances"]
    assert len(instances) == 0 and instances.image_size == (64, 80)
    assert instances.pred_masks.shape == (0, 64, 80)


def test_checkpoint_round_trip(tiny_model, tmp_path):
    tiny_model.eval()
    make_predictions_visible(tiny_model)
    inputs = [make_input(BOXES_A, [0, 1, 2], seed=1)]
    with torch.no_grad():
        expected = tiny_model(copy.deepcopy(inputs))[0]["instances"]
    DetectionCheckpointer(tiny_model, save_dir=str(tmp_path)).save("model_final")
    torch.manual_seed(123)
    restored = build_model(tiny_cfg(extra=["MODEL.SOLO.UPDATE_THRESH_TEST", "0.0"])).eval()
    DetectionCheckpointer(restored).load(str(tmp_path / "model_final.pth"))
    with torch.no_grad():
        got = restored(inputs)[0]["instances"]
    assert len(got) == len(expected) > 0
    assert torch.equal(got.pred_masks, expected.pred_masks)
    assert torch.allclose(got.scores, expected.scores)


def test_default_predictor(tiny_model, tmp_path):
    from detectron2.engine import DefaultPredictor

    DetectionCheckpointer(tiny_model, save_dir=str(tmp_path)).save("model")
    cfg = tiny_cfg(
        extra=[
            "MODEL.WEIGHTS",
            str(tmp_path / "model.pth"),
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "100",
        ]
    )
    predictor = DefaultPredictor(cfg)
    image_bgr = torch.randint(0, 256, (48, 72, 3), dtype=torch.uint8).numpy()
    instances = predictor(image_bgr)["instances"]
    assert instances.image_size == (48, 72)
    assert instances.pred_masks.shape[1:] == (48, 72)
    assert len(instances.scores) == len(instances.pred_classes) == len(instances.pred_boxes)


def test_unknown_in_features_and_grid_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="not backbone outputs"):
        build_model(tiny_cfg(extra=["MODEL.SOLO.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p7']"]))
    with pytest.raises(ValueError, match="NUM_GRIDS"):
        build_model(tiny_cfg(extra=["MODEL.SOLO.NUM_GRIDS", "[8, 6, 5, 4]"]))
