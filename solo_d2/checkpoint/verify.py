"""Checking a converted state dict against the model a config builds, without building it."""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch

from detectron2.modeling import META_ARCH_REGISTRY

__all__ = ["KeyReport", "compare_with_model", "model_state_shapes"]


def model_state_shapes(cfg) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every entry of the state dict of the model ``cfg`` builds.

    The model is built on the "meta" device: no memory is allocated and nothing is initialised,
    so this takes well under a second even for ResNeXt-101 models.
    """
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@dataclass
class KeyReport:
    """How a state dict fits a model: keys it lacks, keys it has extra, shape mismatches."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.ok:
            return "every key matches (no missing, unexpected or shape-mismatched key)"
        lines = [f"missing: {k}" for k in self.missing]
        lines += [f"unexpected: {k}" for k in self.unexpected]
        lines += [
            f"shape: {k} {c} in the checkpoint, {m} in the model" for k, c, m in self.mismatched
        ]
        return "\n".join(lines)


def compare_with_model(
    state_dict: Mapping[str, torch.Tensor], model_shapes: Mapping[str, Tuple[int, ...]]
) -> KeyReport:
    """Compare a state dict with :func:`model_state_shapes` of a config."""
    return KeyReport(
        missing=sorted(set(model_shapes) - set(state_dict)),
        unexpected=sorted(set(state_dict) - set(model_shapes)),
        mismatched=[
            (k, tuple(state_dict[k].shape), tuple(model_shapes[k]))
            for k in sorted(set(state_dict) & set(model_shapes))
            if tuple(state_dict[k].shape) != tuple(model_shapes[k])
        ],
    )
