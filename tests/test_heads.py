"""All SOLO head variants: training/inference, positive-only == dense, overfitting, DCN on CPU."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_input, tiny_cfg
from detectron2.modeling import build_model
from solo_d2.modeling.layers import ModulatedDeformConv2d, per_sample_conv
from solo_d2.modeling.losses import dice_loss
from solo_d2.modeling.targets import build_solov2_targets

SOLOV2_TINY = ["MODEL.SOLO.KERNEL_CHANNELS", "32", "MODEL.SOLO.MASK_FEATURE_CHANNELS", "32"]
HEADS = {
    "SOLO": [],
    "DecoupledSOLO": [],
    "DecoupledSOLOLight": [],
    "SOLOv2": SOLOV2_TINY,
}
BOXES = [[4, 6, 30, 40], [20, 10, 60, 50], [40, 30, 78, 62]]


def build(head, extra=()):
    torch.manual_seed(0)
    return build_model(tiny_cfg(extra=["MODEL.SOLO.HEAD", head, *HEADS[head], *extra]))


def batch():
    return [
        make_input(BOXES, [0, 1, 2], seed=1),
        make_input([], [], seed=2),  # no gt
        make_input([[10, 12, 26, 28]], [2], seed=3, mask_format="polygon"),
    ]


@pytest.mark.parametrize("head", HEADS)
def test_train_step_and_inference(head):
    model = build(head).train()
    losses = model(batch())
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ins"] > 0
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    model.eval()
    model.post_processor.score_thresh = 0.0
    with torch.no_grad():
        results = model(batch())
    for result in results:
        instances = result["instances"]
        assert instances.image_size == (64, 80)
        assert instances.pred_masks.shape[1:] == (64, 80)
        assert len(instances.scores) == len(instances.pred_boxes) == len(instances.pred_classes)


@pytest.mark.parametrize("head", HEADS)
def test_mixed_precision_forward_gives_float32_losses(head):
    """Autocast (bfloat16 here, float16 on CUDA): the network runs in low precision, the losses
    in float32, and every parameter still gets a finite gradient."""
    model = build(head).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("head", HEADS)
def test_no_gt_batch_trains(head):
    model = build(head).train()
    losses = model([make_input([], [], seed=4)])
    assert losses["loss_ins"].item() == 0.0 and losses["loss_cate"] > 0
    sum(losses.values()).backward()


@pytest.mark.parametrize("head", HEADS)
def test_loss_decreases_when_overfitting_one_batch(head):
    model = build(head).train()
    inputs = [make_input(BOXES, [0, 1, 2], seed=1)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    total, ins = [], []
    for _ in range(30):
        losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total.append(loss.item())
        ins.append(losses["loss_ins"].item())
    assert all(torch.isfinite(torch.tensor(total)))
    assert sum(total[-5:]) < 0.85 * sum(total[:5])
    assert sum(ins[-5:]) < sum(ins[:5])  # the masks learn too


def resize(probs, size):
    if size is None:
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]


def dense_level_probs(model, outputs, level, image, out_size=None):
    """All S^2 masks of one image at one level, computed the original dense way (at inference
    resized to ``out_size``: decoupled heads resize the x / y factors before the product)."""
    head = model.head
    data = outputs.mask_data[level]
    if hasattr(head, "mask_preds"):  # SOLO: every output channel of the 1x1 conv
        return resize(head.mask_preds[level](data[image : image + 1])[0].sigmoid(), out_size)
    if hasattr(head, "mask_preds_x"):  # decoupled: outer product of all x and y maps
        x = resize(head.mask_preds_x[level](data[0][image : image + 1])[0].sigmoid(), out_size)
        y = resize(head.mask_preds_y[level](data[1][image : image + 1])[0].sigmoid(), out_size)
        return (y[:, None] * x[None, :]).flatten(0, 1)  # cell i * S + j
    kernels, features = data  # SOLOv2: every cell's kernel
    weights = kernels[image].flatten(1).t()[:, :, None, None]  # [S^2, E, 1, 1]
    return resize(F.conv2d(features[image : image + 1], weights)[0].sigmoid(), out_size)


@pytest.mark.parametrize("head", HEADS)
def test_positive_only_loss_equals_dense_computation(head):
    model = build(head).train()
    inputs = batch()
    torch.manual_seed(0)
    sparse = model(inputs)["loss_ins"]

    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    outputs = model.head([features[f] for f in model.in_features])
    padded = images.tensor.shape[-2:]
    dice = []
    for b, x in enumerate(inputs):
        targets = model.build_targets(x, padded)
        for level in range(len(model.num_grids)):
            dense = dense_level_probs(model, outputs, level, b)  # [S^2, h, w]
            t = targets[level]
            dice.append(dice_loss(dense[t.pos], t.masks[t.gt]))
    dice = torch.cat(dice)
    assert len(dice) > 0
    assert torch.allclose(sparse, model.dice_weight * dice.mean(), rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_candidate_masks_equal_dense_masks_at_inference(head):
    model = build(head).eval()
    with torch.no_grad():
        images = model.preprocess_image(batch())
        features = model.backbone(images.tensor)
        outputs = model.head([features[f] for f in model.in_features])
        out_size = tuple(s // 4 for s in images.tensor.shape[-2:])
        for level, num_grid in enumerate(model.num_grids):
            cells = torch.tensor([0, num_grid + 1, num_grid * num_grid - 1])
            sparse = model.head.mask_probs(
                outputs, level, torch.full_like(cells, 2), cells, out_size
            )
            dense = dense_level_probs(model, outputs, level, 2, out_size)[cells]
            assert sparse.shape == (3, *out_size)
            assert torch.allclose(sparse, dense, atol=1e-6)


def test_decoupled_x_and_y_towers_see_only_their_coordinate():
    model = build("DecoupledSOLO")
    in_channels = model.head.in_channels
    assert model.head.mask_tower_x[0].in_channels == in_channels + 1
    assert model.head.mask_tower_y[0].in_channels == in_channels + 1
    light = build("DecoupledSOLOLight")
    assert light.head.mask_tower[0].in_channels == in_channels + 2


def test_solov2_targets_keep_one_sample_per_gt_cell_pair():
    """Two gts whose centre regions overlap: shared cells give two samples, the later gt's class."""
    masks = torch.zeros((2, 64, 64), dtype=torch.bool)
    masks[0, 20:44, 16:40] = True  # centre (27.5, 31.5)
    masks[1, 20:44, 24:48] = True  # centre (35.5, 31.5)
    boxes = torch.tensor([[16.0, 20, 40, 44], [24.0, 20, 48, 44]])
    levels = build_solov2_targets(
        boxes,
        torch.tensor([3, 5]),
        masks,
        (64, 64),
        num_grids=(8,),
        scale_ranges=((1, 64),),
        strides=(8,),
        sigma=1.0,
        num_classes=10,
    )
    (level,) = levels
    # gt 0: centre cell (3, 3), region rows 2..4, cols 2..4; gt 1: centre (3, 4), cols 3..5
    cells0 = [r * 8 + c for r in (2, 3, 4) for c in (2, 3, 4)]
    cells1 = [r * 8 + c for r in (2, 3, 4) for c in (3, 4, 5)]
    assert level.pos.tolist() == cells0 + cells1
    assert level.gt.tolist() == [0] * 9 + [1] * 9
    assert level.masks.shape == (2, 16, 16)  # stride 4 on every level
    assert level.cate[3, 3] == 5 and level.cate[3, 2] == 3 and level.cate[3, 5] == 5
    assert int((level.cate != 10).sum()) == 12


def test_modulated_deform_conv_on_cpu():
    conv = ModulatedDeformConv2d(4, 6, kernel_size=3, padding=1)
    x = torch.randn(2, 4, 7, 9, requires_grad=True)
    # zero offsets and sigmoid(0) = 0.5 masks at initialisation: half a plain convolution
    expected = 0.5 * F.conv2d(x, conv.weight, padding=1) + conv.bias[None, :, None, None]
    out = conv(x)
    assert torch.allclose(out, expected, atol=1e-5)
    out.square().sum().backward()
    assert conv.offset_weight.grad is not None and conv.offset_weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "head,extra",
    [
        ("DecoupledSOLOLight", ["MODEL.SOLO.DCN_TOWER_LAYERS", "last"]),
        (
            "SOLOv2",
            [
                "MODEL.SOLO.DCN_TOWER_LAYERS",
                "all",
                "MODEL.SOLO.USE_DCN_IN_MASK_FEATURES",
                "True",
                "MODEL.RESNETS.DEPTH",
                "50",
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                "256",
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
                "[False, False, False, True]",
                "MODEL.RESNETS.DEFORM_MODULATED",
                "True",
            ],
        ),
    ],
)
def test_deformable_configurations_train_on_cpu(head, extra):
    model = build(head, extra).train()
    deformable = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert deformable
    sum(model(batch()).values()).backward()
    assert all(m.offset_weight.grad is not None for m in deformable)
    if "MODEL.RESNETS.DEFORM_MODULATED" in extra:  # detectron2's DCNv2 in res5 (compat on CPU)
        from detectron2.layers import ModulatedDeformConv

        backbone_dcn = [m for m in model.backbone.modules() if isinstance(m, ModulatedDeformConv)]
        assert backbone_dcn and all(m.weight.grad is not None for m in backbone_dcn)


def test_per_sample_conv_matches_grouped_reference():
    features = torch.randn(2, 3, 5, 6)
    weights = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    image_idx = torch.tensor([1, 0, 1, 0])
    out = per_sample_conv(features, image_idx, weights, bias)
    for k in range(4):
        ref = F.conv2d(
            features[image_idx[k] : image_idx[k] + 1],
            weights[k : k + 1],
            bias[k : k + 1],
            padding=1,
        )
        assert torch.allclose(out[k], ref[0, 0], atol=1e-5)


@pytest.mark.parametrize("mode, values", [("half_ties", {0.0, 0.5, 1.0}), ("area", None)])
def test_soft_mask_targets_reach_the_loss(mode, values):
    """MODEL.SOLO.MASK_TARGET half_ties / area: the model's targets are soft at the edges and
    train; an unknown mode is refused by its key."""
    cfg = tiny_cfg(extra=["MODEL.SOLO.HEAD", "SOLOv2", "MODEL.SOLO.MASK_TARGET", mode])
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = [make_input([(5, 5, 31, 31), (30, 21, 61, 50)], [0, 2], seed=1)]
    padded = model.preprocess_image(batch).tensor.shape[-2:]
    masks = model.build_targets(batch[0], padded)[0].masks
    assert masks.dtype == torch.float32
    soft = masks[(masks > 0) & (masks < 1)]
    assert len(soft) and (values is None or set(masks.unique().tolist()) == values)
    losses = model(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="MODEL.SOLO.MASK_TARGET must be one of"):
        build_model(tiny_cfg(extra=["MODEL.SOLO.MASK_TARGET", "soft"]))


def test_solov2_mask_feature_stride_2_gives_masks_and_targets_at_half_resolution():
    """MODEL.SOLO.MASK_FEATURE_STRIDE 2: mask features (and targets) at H/2, inference compares
    masks at H/2 and counts the area bound (rule I3) in H/4 pixels."""
    cfg = tiny_cfg(
        extra=["MODEL.SOLO.HEAD", "SOLOv2", "MODEL.SOLO.MASK_FEATURE_STRIDE", "2"]
        + ["MODEL.SOLO.SCORE_THRESH_TEST", "0.0"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.head.mask_stride == 2 and model.post_processor.mask_stride == 2
    batch = [make_input([(4, 4, 30, 30), (30, 20, 60, 50)], [0, 2], seed=1)]
    images = model.preprocess_image(batch)
    outputs = model.head([model.backbone(images.tensor)[f] for f in model.in_features])
    height, width = images.tensor.shape[-2:]
    assert outputs.mask_data[0][1].shape[-2:] == (height // 2, width // 2)
    targets = [model.build_targets(x, images.tensor.shape[-2:]) for x in batch]
    assert targets[0][0].masks.shape[-2:] == (height // 2, width // 2)
    losses = model(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="MASK_FEATURE_STRIDE must be 4 or 2"):
        build_model(
            tiny_cfg(extra=["MODEL.SOLO.HEAD", "SOLOv2", "MODEL.SOLO.MASK_FEATURE_STRIDE", "8"])
        )


@pytest.mark.parametrize("output_stride", [2, 1])
def test_solov2_mask_output_stride_upsamples_the_logits(output_stride):
    """MODEL.SOLO.MASK_OUTPUT_STRIDE: the same weights as the stride-4 model; the masks are the
    sigmoid of the bilinearly upsampled logits (the head upsamples the features, which a 1x1
    dynamic conv commutes with), targets and inference at the finer stride."""
    coarse = build("SOLOv2").eval()
    fine = build("SOLOv2", ["MODEL.SOLO.MASK_OUTPUT_STRIDE", str(output_stride)]).eval()
    fine.load_state_dict(coarse.state_dict())
    assert fine.head.mask_stride == fine.post_processor.mask_stride == output_stride
    inputs = batch()
    images = coarse.preprocess_image(inputs)
    height, width = images.tensor.shape[-2:]
    with torch.no_grad():
        features = [coarse.backbone(images.tensor)[f] for f in coarse.in_features]
        outputs = coarse.head(features)
        cells, image_idx = torch.tensor([0, 5, 17]), torch.tensor([0, 0, 2])
        coarse_probs = coarse.head.mask_probs(outputs, 1, image_idx, cells)
        fine_probs = fine.head.mask_probs(fine.head(features), 1, image_idx, cells)
    assert coarse_probs.shape[-2:] == (height // 4, width // 4)
    assert fine_probs.shape[-2:] == (height // output_stride, width // output_stride)
    expected = F.interpolate(
        torch.logit(coarse_probs.double())[None],
        size=fine_probs.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )[0].sigmoid()
    torch.testing.assert_close(fine_probs.double(), expected, atol=1e-5, rtol=1e-4)
    # upsampled probabilities would differ: the key changes the masks' outlines
    assert not torch.allclose(fine_probs, resize(coarse_probs, fine_probs.shape[-2:]), atol=1e-4)

    fine.train()
    targets = [fine.build_targets(x, images.tensor.shape[-2:]) for x in inputs]
    assert targets[0][0].masks.shape[-2:] == (height // output_stride, width // output_stride)
    losses = fine(inputs)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ins"] > 0
    fine.eval()
    with torch.no_grad():
        result = fine(inputs)[0]["instances"]
    assert result.pred_masks.shape[-2:] == tuple(inputs[0]["image"].shape[-2:])


def test_solov2_mask_output_stride_must_divide_the_feature_stride():
    for stride in ("3", "8"):
        with pytest.raises(ValueError, match="MASK_OUTPUT_STRIDE must be 0 or 1, 2 or 4"):
            build("SOLOv2", ["MODEL.SOLO.MASK_OUTPUT_STRIDE", stride])
    with pytest.raises(ValueError, match="MASK_OUTPUT_STRIDE must be 0 or 1, 2 or 4"):
        build(
            "SOLOv2", ["MODEL.SOLO.MASK_FEATURE_STRIDE", "2", "MODEL.SOLO.MASK_OUTPUT_STRIDE", "4"]
        )


def _tower_norms(model):
    """The norm layers behind the tower convs of the head (cate, mask / kernel towers)."""
    return [
        conv.norm
        for name, tower in model.head.named_children()
        if name.endswith("tower") or "tower_" in name
        for conv in tower
    ]


@pytest.mark.parametrize("head", HEADS)
def test_norm_per_level_gives_each_level_its_own_batchnorm(head):
    """MODEL.SOLO.NORM_PER_LEVEL: a training step runs each level's BatchNorm once (each
    level's statistics apart, and they differ), where the shared tower's BN runs once per level
    and keeps one average; every per-level norm gets a gradient."""
    levels = 5
    shared = build(head, ["MODEL.SOLO.NORM", "BN"]).train()
    shared(batch())
    assert {int(n.num_batches_tracked) for n in _tower_norms(shared)} == {levels}

    model = build(head, ["MODEL.SOLO.NORM", "BN", "MODEL.SOLO.NORM_PER_LEVEL", "True"]).train()
    sum(model(batch()).values()).backward()
    per_level = _tower_norms(model)
    assert per_level and all(len(n.norms) == levels for n in per_level)
    assert {int(bn.num_batches_tracked) for n in per_level for bn in n.norms} == {1}
    means = torch.stack([bn.running_mean for bn in per_level[0].norms])
    assert not torch.allclose(means[0], means[2])
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("head", ["SOLO", "SOLOv2"])
def test_norm_per_level_with_copies_of_one_norm_infers_as_the_shared_tower(head):
    """Per-level norms that all hold the shared norm's parameters and statistics give the
    shared head's outputs (eval mode): only the choice of norm per level differs; changing one
    level's statistics changes that level's outputs only."""
    shared = build(head, ["MODEL.SOLO.NORM", "BN"])
    generator = torch.Generator().manual_seed(0)
    for norm in _tower_norms(shared):
        norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=generator))
        norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=generator) + 0.5)
        norm.weight.data.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
    model = build(head, ["MODEL.SOLO.NORM", "BN", "MODEL.SOLO.NORM_PER_LEVEL", "True"])
    state = {}
    for key, value in shared.state_dict().items():
        if ".norm." in key and "tower" in key:
            prefix, leaf = key.rsplit(".norm.", 1)
            for level in range(5):
                state[f"{prefix}.norm.norms.{level}.{leaf}"] = value
        else:
            state[key] = value
    model.load_state_dict(state, strict=True)
    shared.eval()
    model.eval()
    features = [torch.randn(2, 32, 64 // 2**k, 80 // 2**k, generator=generator) for k in range(5)]
    with torch.no_grad():
        expected, got = shared.head(features), model.head(features)

    def flat(outputs):
        mask_data = [d if isinstance(d, tuple) else (d,) for d in outputs.mask_data]
        tensors = list(outputs.cate_logits) + [t for data in mask_data for t in data]
        return torch.cat([t.flatten() for t in tensors])

    torch.testing.assert_close(flat(got), flat(expected))
    # and the per-level norms do pick their level: other statistics at one level change it
    model.head.cate_tower[0].norm.norms[3].running_mean.add_(1.0)
    with torch.no_grad():
        changed = model.head(features)
    torch.testing.assert_close(changed.cate_logits[2], expected.cate_logits[2])
    assert not torch.allclose(changed.cate_logits[3], expected.cate_logits[3])


def test_norm_per_level_needs_a_norm():
    with pytest.raises(ValueError, match="NORM_PER_LEVEL needs a MODEL.SOLO.NORM"):
        build("SOLOv2", ["MODEL.SOLO.NORM", "", "MODEL.SOLO.NORM_PER_LEVEL", "True"])
