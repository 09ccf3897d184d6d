"""Non-finite values, degenerate images and extreme sizes."""

import math
import re

import pytest
import torch

from conftest import make_input, tiny_cfg
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.structures import Instances
from solo_d2.modeling.losses import category_focal_loss, dice_loss
from solo_d2.modeling.postprocess import SOLOPostProcessor, binarize_with_maskness, matrix_nms

HEADS = ["SOLO", "DecoupledSOLO", "DecoupledSOLOLight", "SOLOv2"]


def tiny_model(head="SOLO"):
    torch.manual_seed(0)
    extra = ["MODEL.SOLO.HEAD", head, "MODEL.SOLO.MASK_PRIOR_PROB", "0.5"]
    extra += ["MODEL.SOLO.KERNEL_CHANNELS", "32", "MODEL.SOLO.MASK_FEATURE_CHANNELS", "32"]
    return build_model(tiny_cfg(extra=extra))


def test_a_nan_loss_stops_training_naming_the_term_and_the_iteration(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from solo_d2.engine import Trainer

    if "nan_train" not in DatasetCatalog.list():
        DatasetCatalog.register(
            "nan_train",
            lambda: [
                {
                    "file_name": "unused",
                    "image_id": 0,
                    "height": 64,
                    "width": 80,
                    "annotations": [],
                }
            ],
        )
        MetadataCatalog.get("nan_train").set(thing_classes=["a", "b", "c"])

    class PoisonCategoryBias(HookBase):
        def before_step(self):
            if self.trainer.iter == 2:
                with torch.no_grad():
                    self.trainer.model.head.cate_pred.bias.fill_(math.nan)

    cfg = tiny_cfg(extra=["DATASETS.TRAIN", "('nan_train',)", "DATASETS.TEST", "()"])
    cfg.merge_from_list(["SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(tmp_path)])
    cfg.merge_from_list(["DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"])

    class Synthetic(Trainer):  # images in memory: no file needed
        @classmethod
        def build_train_loader(cls, cfg, start_iter=0):
            def batches():
                while True:
                    yield [make_input([[4, 6, 30, 40]], [1], seed=1)]

            return batches()

    trainer = Synthetic(cfg)
    trainer.register_hooks([PoisonCategoryBias()])
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    assert "iteration=2" in str(error.value)
    assert re.search(r"'loss_cate': (np.float64\()?nan", str(error.value))  # the NaN term


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("value", [0, 255])
def test_constant_images_give_empty_or_valid_results(head, value):
    model = tiny_model(head).eval()
    item = make_input([], [], seed=0)
    item["image"] = torch.full_like(item["image"], value)
    with torch.no_grad():
        (result,) = model([item])
    instances = result["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (64, 80)
    assert torch.isfinite(instances.scores).all()


def test_extreme_logits_give_no_nan():
    logits = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 3.0]])
    probs = torch.stack([torch.full((6, 6), 0.0), torch.full((6, 6), 1.0)])
    assert torch.isfinite(dice_loss(logits.new_tensor(probs), probs > 0.5)).all()
    assert torch.isfinite(dice_loss(logits[:, :2, None].sigmoid(), torch.ones(2, 2, 1))).all()
    focal = category_focal_loss(logits, torch.tensor([1, 3]), 3, 0.25, 2.0)
    assert torch.isfinite(focal)
    saturated = (torch.randn(4, 8, 8) * 1e4).sigmoid()
    binary, areas, maskness = binarize_with_maskness(saturated, 0.5)
    assert torch.isfinite(maskness).all() and ((maskness == 0) | (maskness == 1)).all()
    scores = torch.tensor([1.0, 1.0, 1.0, 0.5])
    labels = torch.zeros(4, dtype=torch.long)
    same = binary[:1].expand(4, -1, -1)
    for kernel in ("gaussian", "linear"):
        decayed = matrix_nms(same, labels, scores, kernel, 2.0)
        assert torch.isfinite(decayed).all()


@pytest.mark.parametrize("head", HEADS)
def test_images_smaller_than_32_pixels_and_batches_of_mixed_sizes(head):
    model = tiny_model(head).train()
    tiny = make_input([[2, 3, 12, 9]], [0], height=13, width=20, seed=1)
    large = make_input([[4, 6, 50, 40], [30, 20, 90, 70]], [1, 2], height=96, width=120, seed=2)
    losses = model([tiny, large])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    model.post_processor.score_thresh = 0.0
    with torch.no_grad():
        results = model([tiny, large])
    assert results[0]["instances"].image_size == (13, 20)
    assert results[1]["instances"].pred_masks.shape[1:] == (96, 120)


def test_masks_of_a_4000_x_3000_image_are_pasted_at_full_size():
    """The soft masks are resized in chunks (rule I6); memory is in docs/BENCHMARKS.md."""
    post = SOLOPostProcessor(num_grids=(4, 3, 3, 2, 2), strides=(8, 8, 16, 32, 32))
    cate = [torch.full((2, s, s), 5.0) for s in post.num_grids]  # every cell a candidate

    def mask_probs(level, cells, size):
        probs = torch.zeros(len(cells), *size)
        for k, cell in enumerate(cells.tolist()):
            probs[k, : 8 + 4 * cell, : 8 + 2 * cell] = 1.0
        return probs

    result = post(cate, mask_probs, (96, 128), (96, 128), (3000, 4000))
    assert len(result) > 0 and result.pred_masks.shape[1:] == (3000, 4000)
    assert result.pred_masks.dtype == torch.bool
    boxes = result.pred_boxes.tensor
    assert (boxes[:, 2] <= 4000).all() and (boxes[:, 3] <= 3000).all()
