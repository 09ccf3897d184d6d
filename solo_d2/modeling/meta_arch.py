"""The ``SOLO`` meta-architecture: ResNet-FPN backbone + SOLO head, Detectron2 model contract."""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks

from .heads import SOLOHeadBase, SOLOHeadOutputs, build_solo_head
from .losses import category_focal_loss, mask_loss
from .postprocess import SOLOPostProcessor
from .targets import MASK_TARGET_MODES, LevelTargets, build_solo_targets

__all__ = ["SOLO", "gt_bitmasks"]


def gt_bitmasks(instances: Instances, padded_size: Tuple[int, int]) -> torch.Tensor:
    """gt masks of ``instances`` (``PolygonMasks``, ``BitMasks`` or none) as Bool[N, H, W] at the
    padded input size (zero padding at the bottom/right)."""
    height, width = padded_size
    device = instances.gt_classes.device
    if not instances.has("gt_masks"):
        if len(instances):
            raise ValueError("SOLO needs gt masks: the instances have no 'gt_masks' field")
        return torch.zeros((0, height, width), dtype=torch.bool, device=device)
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        return BitMasks.from_polygon_masks(masks, height, width).tensor.to(device)
    if isinstance(masks, BitMasks):
        masks = masks.tensor
    masks = masks.to(device=device, dtype=torch.bool)
    padded = masks.new_zeros((len(masks), height, width))
    padded[:, : masks.shape[1], : masks.shape[2]] = masks
    return padded


@META_ARCH_REGISTRY.register()
class SOLO(nn.Module):
    """SOLO: Segmenting Objects by Locations (and its head variants, see ``MODEL.SOLO.HEAD``).

    ``forward`` follows Detectron2's contract: a dict of losses in training, and per image
    ``{"instances": Instances}`` with ``pred_masks``, ``scores``, ``pred_classes`` and
    ``pred_boxes`` (tight boxes of the masks) at the input's ``height`` x ``width`` otherwise.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: SOLOHeadBase,
        in_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_classes: int,
        scale_ranges: Sequence[Sequence[float]],
        strides: Sequence[int],
        sigma: float,
        min_mask_pixels: int,
        dice_weight: float,
        focal_weight: float,
        focal_alpha: float,
        focal_gamma: float,
        post_processor: SOLOPostProcessor,
        trust_weights_pickle: bool = False,
        mask_target: str = "binary",
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_features = list(in_features)
        self.num_classes = num_classes
        self.num_grids = list(head.num_grids)
        if not (len(self.num_grids) == len(scale_ranges) == len(strides) == len(self.in_features)):
            raise ValueError(
                "MODEL.SOLO.IN_FEATURES, NUM_GRIDS, SCALE_RANGES and FPN_STRIDES need one entry "
                "per level"
            )
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.strides = list(strides)
        self.sigma = sigma
        self.min_mask_pixels = min_mask_pixels
        if mask_target not in MASK_TARGET_MODES:
            raise ValueError(
                f"MODEL.SOLO.MASK_TARGET must be one of {MASK_TARGET_MODES}, got {mask_target!r}"
            )
        self.mask_target = mask_target
        self.dice_weight = dice_weight
        self.focal_weight = focal_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.post_processor = post_processor
        # Read by solo_d2.checkpoint when loading weights into this model.
        self.trust_weights_pickle = trust_weights_pickle
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        head_cfg = cfg.MODEL.SOLO
        missing = [f for f in head_cfg.IN_FEATURES if f not in backbone.output_shape()]
        if missing:
            raise ValueError(
                f"MODEL.SOLO.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(backbone.output_shape())}"
            )
        head = build_solo_head(cfg, backbone.output_shape())
        return {
            "backbone": backbone,
            "head": head,
            "in_features": head_cfg.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": head_cfg.NUM_CLASSES,
            "scale_ranges": head_cfg.SCALE_RANGES,
            "strides": head_cfg.FPN_STRIDES,
            "sigma": head_cfg.SIGMA,
            "min_mask_pixels": head_cfg.MIN_MASK_PIXELS,
            "mask_target": head_cfg.MASK_TARGET,
            "dice_weight": head_cfg.DICE_WEIGHT,
            "focal_weight": head_cfg.FOCAL_WEIGHT,
            "focal_alpha": head_cfg.FOCAL_ALPHA,
            "focal_gamma": head_cfg.FOCAL_GAMMA,
            "post_processor": SOLOPostProcessor(
                num_grids=head_cfg.NUM_GRIDS,
                strides=head_cfg.FPN_STRIDES,
                score_thresh=head_cfg.SCORE_THRESH_TEST,
                mask_thresh=head_cfg.MASK_THRESH_TEST,
                nms_pre=head_cfg.NMS_PRE_TEST,
                update_thresh=head_cfg.UPDATE_THRESH_TEST,
                nms_kernel=head_cfg.NMS_KERNEL,
                nms_sigma=head_cfg.NMS_SIGMA,
                max_per_image=head_cfg.MAX_PER_IMG,
                mask_area_factor=head_cfg.MASK_AREA_FACTOR_TEST,
                mask_stride=head.mask_stride,
                keep_peak_component=head_cfg.KEEP_PEAK_COMPONENT_TEST,
            ),
            "trust_weights_pickle": head_cfg.TRUST_WEIGHTS_PICKLE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.head([features[f] for f in self.in_features])
        if self.training:
            targets = [self.build_targets(x, images.tensor.shape[-2:]) for x in batched_inputs]
            return self.losses(outputs, targets)
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            output_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(
                {
                    "instances": self.inference_single(
                        outputs, i, tuple(images.tensor.shape[-2:]), image_size, output_size
                    )
                }
            )
        return results

    # ------------------------------------------------------------------ training
    def build_targets(
        self, batched_input: Dict, padded_size: Tuple[int, int]
    ) -> List[LevelTargets]:
        """SOLO targets of one input (``batched_input["instances"]``) at the padded size."""
        if "instances" not in batched_input:
            raise ValueError(
                f"training input {_describe(batched_input)} has no 'instances' (ground truth)"
            )
        instances = batched_input["instances"].to(self.device)
        classes = instances.gt_classes
        if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"gt class ids of {_describe(batched_input)} span [{int(classes.min())}, "
                f"{int(classes.max())}] but MODEL.SOLO.NUM_CLASSES is {self.num_classes}"
            )
        return build_solo_targets(
            instances.gt_boxes.tensor,
            classes,
            gt_bitmasks(instances, padded_size),
            padded_size,
            num_grids=self.num_grids,
            scale_ranges=self.scale_ranges,
            strides=self.strides,
            sigma=self.sigma,
            num_classes=self.num_classes,
            min_mask_pixels=self.min_mask_pixels,
            one_sample_per_cell=self.head.one_sample_per_cell,
            mask_output_strides=self.head.target_mask_strides(self.strides),
            mask_target=self.mask_target,
        )

    def losses(
        self, outputs: SOLOHeadOutputs, targets: List[List[LevelTargets]]
    ) -> Dict[str, torch.Tensor]:
        """Dice over the positive mask samples + focal over all cells (DESIGN.md rules L1-L3)."""
        probs, masks = self.mask_samples(outputs, targets)
        cate_logits = torch.cat(
            [
                logits.permute(0, 2, 3, 1).reshape(-1, self.num_classes)
                for logits in outputs.cate_logits
            ]
        )
        cate_labels = torch.cat(
            [
                torch.stack([t[level].cate for t in targets]).flatten()
                for level in range(len(self.num_grids))
            ]
        )
        return {
            "loss_ins": self.dice_weight * mask_loss(probs, masks),
            "loss_cate": self.focal_weight
            * category_focal_loss(
                cate_logits, cate_labels, self.num_classes, self.focal_alpha, self.focal_gamma
            ),
        }

    def mask_samples(
        self, outputs: SOLOHeadOutputs, targets: List[List[LevelTargets]]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per level, the predicted probabilities Float[P, h, w] and targets Bool[P, h, w]
        (Float32 unless ``MASK_TARGET`` is "binary") of the positive samples of all images;
        masks are computed for these cells only."""
        probs, masks = [], []
        for level in range(len(self.num_grids)):
            per_image = [t[level] for t in targets]
            image_idx = torch.cat([torch.full_like(t.pos, i) for i, t in enumerate(per_image)])
            cells = torch.cat([t.pos for t in per_image])
            probs.append(self.head.mask_probs(outputs, level, image_idx, cells))
            masks.append(torch.cat([t.masks[t.gt] for t in per_image]))
        return probs, masks

    # ------------------------------------------------------------------ inference
    def inference_single(
        self,
        outputs: SOLOHeadOutputs,
        image_idx: int,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Instances:
        """Detections of image ``image_idx`` of the batch (DESIGN.md rules I1-I7)."""

        def mask_probs(level, cells, size):
            image = torch.full_like(cells, image_idx)
            return self.head.mask_probs(outputs, level, image, cells, size)

        cate_logits = [logits[image_idx] for logits in outputs.cate_logits]
        return self.post_processor(cate_logits, mask_probs, padded_size, image_size, output_size)


def _describe(batched_input: Dict) -> str:
    """'image <id> (<file>)' for error messages."""
    parts = []
    if "image_id" in batched_input:
        parts.append(f"image_id {batched_input['image_id']}")
    if "file_name" in batched_input:
        parts.append(f"file {batched_input['file_name']}")
    return ", ".join(parts) or "an input without file_name/image_id"
