"""A ResNet-FPN backbone of basic blocks whose width and depth are free (for small CPU models).

Detectron2's ``build_resnet_fpn_backbone`` fixes ResNet-18/34 at 64 channels in res2 and at
[2, 2, 2, 2] / [3, 4, 6, 3] blocks. :func:`build_basic_resnet_fpn_backbone` builds the same
network (Detectron2's ``BasicStem``, ``BasicBlock``, ``ResNet`` and ``FPN`` with a
``LastLevelMaxPool`` P6) with ``MODEL.BASIC_RESNET.WIDTH`` channels in the stem and res2,
doubling per stage, and ``MODEL.BASIC_RESNET.BLOCKS_PER_STAGE`` blocks. With width 64 and
[2, 2, 2, 2] it is Detectron2's ResNet-18-FPN, parameter for parameter (tested), so checkpoints
keep Detectron2's key names. Every other setting comes from Detectron2's keys:
``MODEL.RESNETS.NORM`` / ``OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.FPN.*``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

__all__ = ["build_basic_resnet", "build_basic_resnet_fpn_backbone"]


def build_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """The ResNet of basic blocks (res2..res5) described by ``MODEL.BASIC_RESNET``."""
    width = cfg.MODEL.BASIC_RESNET.WIDTH
    blocks = list(cfg.MODEL.BASIC_RESNET.BLOCKS_PER_STAGE)
    if width < 1 or len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(
            "MODEL.BASIC_RESNET: WIDTH must be >= 1 and BLOCKS_PER_STAGE four counts >= 1 "
            f"(res2..res5), got {width} and {blocks}"
        )
    norm = cfg.MODEL.RESNETS.NORM
    out_features = cfg.MODEL.RESNETS.OUT_FEATURES
    stem = BasicStem(in_channels=input_shape.channels, out_channels=width, norm=norm)
    last_stage = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in out_features)
    stages, in_channels = [], width
    for index, num_blocks in enumerate(blocks[: last_stage - 1]):
        out_channels = width * 2**index
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[1 if index == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels = out_channels
    return ResNet(stem, stages, out_features=out_features).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_basic_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: "build_basic_resnet_fpn_backbone"``: :func:`build_basic_resnet`
    with Detectron2's FPN (``MODEL.FPN.*``) and a max-pooled P6, as ``build_resnet_fpn_backbone``.
    """
    return FPN(
        bottom_up=build_basic_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
