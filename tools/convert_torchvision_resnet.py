#!/usr/bin/env python
"""Convert torchvision ImageNet ResNet weights to a Detectron2 backbone checkpoint.

The original SOLO checkpoints start from torchvision ("pytorch"-style) ResNets, so the solo_d2
COCO configs use them too (RGB input, torchvision normalisation, ``STRIDE_IN_1X1: False``):

    python tools/convert_torchvision_resnet.py --arch resnet50 pretrained/R-50-torchvision.pkl
    python tools/convert_torchvision_resnet.py --arch resnext101_64x4d \
        pretrained/X-101-64x4d-torchvision.pkl
    python tools/convert_torchvision_resnet.py --weights resnet50-0676ba61.pth out.pkl

Without ``--weights`` the torchvision weights are downloaded (needs internet access).
"""

import argparse
import os
import pickle

import torch

from solo_d2.checkpoint.keymaps import DROPPED_KEY_PATTERN, resnet_key

__all__ = ["convert_state_dict"]


def convert_state_dict(state_dict):
    """torchvision ResNet state dict -> {Detectron2 ResNet name: numpy array}.

    Drops the classifier (``fc``) and BatchNorm counters; any other unknown key is an error.
    """
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or DROPPED_KEY_PATTERN.fullmatch(name):
            continue
        new_name = resnet_key(name)
        if new_name is None:
            raise KeyError(f"{name!r} is not a torchvision ResNet parameter")
        converted[new_name] = value.detach().cpu().numpy()
    return converted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the .pkl to write (set it as MODEL.WEIGHTS)")
    parser.add_argument(
        "--arch",
        default="resnet50",
        choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext101_64x4d"),
        help="torchvision model whose ImageNet weights are downloaded (without --weights)",
    )
    parser.add_argument("--weights", help="a torchvision ResNet state dict (.pth) on disk")
    args = parser.parse_args(argv)
    if args.weights:
        state_dict = torch.load(args.weights, map_location="cpu", weights_only=True)
    else:
        import torchvision

        model = getattr(torchvision.models, args.arch)(weights="IMAGENET1K_V1")
        state_dict = model.state_dict()
    checkpoint = {
        "model": convert_state_dict(state_dict),
        "__author__": "torchvision",
        "matching_heuristics": True,  # Detectron2 maps these names onto backbone.bottom_up.*
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        pickle.dump(checkpoint, f)
    print(f"wrote {len(checkpoint['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
