"""Convert published SOLO checkpoints (original code, AdelaiDet, mmdetection) to solo_d2.

:func:`convert_checkpoint` takes a loaded checkpoint in any of the three published layouts and
returns a state dict with solo_d2 names. Every tensor is mapped or the conversion fails naming
the keys it cannot map; only bookkeeping entries (:data:`keymaps.DROPPED_KEY_PATTERN`) are
dropped. Deformable-conv offsets of DCN v1 models are padded to solo_d2's modulated (DCN v2)
layout so that the result is exact (see :func:`pad_dcn_v1_offsets`).
"""

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .keymaps import DROPPED_KEY_PATTERN, adelaidet_head_keys, mmdet_to_original_key, original_key

__all__ = [
    "SOURCES",
    "CheckpointConversionError",
    "ConvertedCheckpoint",
    "convert_checkpoint",
    "detect_source",
    "pad_dcn_v1_offsets",
    "unwrap_state_dict",
]

#: Layouts :func:`convert_checkpoint` reads.
SOURCES = ("original", "adelaidet", "mmdet")

#: Mask logit of the padded modulation channels: sigmoid(30) is exactly 1.0 in float32 (and in
#: float16), so a padded DCN v1 offset conv gives DCN v2 the unmodulated v1 sampling.
_UNIT_MASK_LOGIT = 30.0
_OFFSET_KEY = re.compile(r".*\.(offset_weight|offset_bias|conv2_offset\.weight|conv2_offset\.bias)")


class CheckpointConversionError(ValueError):
    """A checkpoint whose keys or tensors do not fit the layout it was read as."""


@dataclass
class ConvertedCheckpoint:
    """Result of :func:`convert_checkpoint`.

    Attributes:
        state_dict: solo_d2 name -> tensor.
        source: the layout it was read as (one of :data:`SOURCES`).
        dropped: source keys dropped by rule (BatchNorm counters and the like).
        padded_dcn_v1: solo_d2 keys whose DCN v1 offsets were padded to the v2 layout.
        classes: class names stored in the checkpoint's metadata, if any.
    """

    state_dict: Dict[str, torch.Tensor]
    source: str
    dropped: List[str] = field(default_factory=list)
    padded_dcn_v1: List[str] = field(default_factory=list)
    classes: Optional[Tuple[str, ...]] = None


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in value.values()
    )


def unwrap_state_dict(checkpoint: Mapping) -> Tuple[Dict[str, Any], Optional[Tuple[str, ...]]]:
    """The weights of a loaded checkpoint file and the class names of its metadata.

    Accepts mmcv / mmengine files (``{"meta", "state_dict", ...}``), Detectron2 / fvcore files
    (``{"model", ...}``) and bare state dicts; strips a ``module.`` prefix (DataParallel).
    """
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        weights = checkpoint["state_dict"]
    elif "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        weights = checkpoint["model"]
    else:
        weights = checkpoint
    if not _is_tensor_dict(weights):
        bad = [k for k, v in weights.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        raise CheckpointConversionError(
            f"the checkpoint holds no state dict of tensors (non-tensor entries: {bad[:5]})"
        )
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    return dict(weights), (tuple(classes) if classes else None)


def detect_source(weights: Mapping[str, Any]) -> Optional[str]:
    """The published layout of a state dict, or None for solo_d2 / Detectron2 names.

    Decided by module prefixes: ``ins_head.`` (AdelaiDet), ``mask_head.`` without ``ins_head.``
    (mmdetection), ``bbox_head.`` / ``mask_feat_head.`` / ``neck.`` / mmdet ResNet names under
    ``backbone.`` (original).
    """
    prefixes = {key.split(".", 1)[0] for key in weights}
    if "ins_head" in prefixes:
        return "adelaidet"
    if "mask_head" in prefixes:
        return "mmdet"
    if prefixes & {"bbox_head", "mask_feat_head", "neck"}:
        return "original"
    if any(re.fullmatch(r"backbone\.(conv1|bn1|layer\d)\..+", key) for key in weights):
        return "original"  # an mmdet / torchvision-named backbone alone
    return None


def pad_dcn_v1_offsets(weight: torch.Tensor, bias: torch.Tensor):
    """DCN v1 offset conv ([2k^2, C, k, k], [2k^2]) -> DCN v2 layout ([3k^2, ...], [3k^2]).

    The extra k^2 channels are the modulation logits: zero weights and bias 30, whose sigmoid is
    exactly 1.0, so the modulated conv samples exactly as the unmodulated v1 conv did.
    """
    taps = weight.shape[-1] * weight.shape[-2]
    padded_weight = torch.cat([weight, weight.new_zeros((taps, *weight.shape[1:]))])
    padded_bias = torch.cat([bias, bias.new_full((taps,), _UNIT_MASK_LOGIT)])
    return padded_weight, padded_bias


def _rename(weights: Mapping[str, Any], source: str) -> Tuple[Dict[str, str], List[str], List[str]]:
    """(source key -> solo_d2 key, dropped keys, unmapped keys)."""
    dropped = [k for k in weights if DROPPED_KEY_PATTERN.fullmatch(k)]
    keys = [k for k in weights if k not in set(dropped)]
    if source == "adelaidet":
        mapping = adelaidet_head_keys({k: np.ndim(weights[k]) for k in keys})
    elif source == "mmdet":
        mapping = {}
        for key in keys:
            renamed = mmdet_to_original_key(key)
            mapping[key] = None if renamed is None else original_key(renamed)
    elif source == "original":
        mapping = {key: original_key(key) for key in keys}
    else:
        raise ValueError(f"unknown checkpoint source {source!r}; expected one of {SOURCES}")
    unmapped = [k for k, v in mapping.items() if v is None]
    return {k: v for k, v in mapping.items() if v is not None}, dropped, unmapped


def convert_checkpoint(
    checkpoint: Mapping,
    source: str = "auto",
    target_shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> ConvertedCheckpoint:
    """Convert a loaded published checkpoint to solo_d2 names.

    Args:
        checkpoint: the loaded file (any container :func:`unwrap_state_dict` accepts).
        source: one of :data:`SOURCES`, or "auto" (:func:`detect_source`).
        target_shapes: optional solo_d2 name -> shape of the model to load into. It decides
            whether DCN v1 offsets (2k^2 channels) are padded to the modulated layout (3k^2,
            solo_d2's default) or kept (a Detectron2 backbone with ``DEFORM_MODULATED False``).
    Raises:
        CheckpointConversionError: keys that no rule maps (all of them are named), two keys
            mapped to one name, or a file that is not in the given layout.
    """
    weights, classes = unwrap_state_dict(checkpoint)
    if source == "auto":
        source = detect_source(weights)
        if source is None:
            raise CheckpointConversionError(
                "the checkpoint has no keys of the original SOLO code, AdelaiDet or mmdetection "
                "(it may already use Detectron2 / solo_d2 names)"
            )
    mapping, dropped, unmapped = _rename(weights, source)
    if unmapped:
        raise CheckpointConversionError(
            f"{len(unmapped)} key(s) of the {source!r} checkpoint have no solo_d2 counterpart: "
            + ", ".join(unmapped)
        )
    targets: Dict[str, List[str]] = {}
    for key, name in mapping.items():
        targets.setdefault(name, []).append(key)
    clashes = {name: keys for name, keys in targets.items() if len(keys) > 1}
    if clashes:
        raise CheckpointConversionError(f"several {source!r} keys map to one name: {clashes}")

    state_dict = {
        name: torch.as_tensor(weights[key]).detach().clone() for key, name in mapping.items()
    }
    padded = _pad_v1_offsets(state_dict, target_shapes)
    return ConvertedCheckpoint(state_dict, source, sorted(dropped), padded, classes)


def _pad_v1_offsets(state_dict: Dict[str, torch.Tensor], target_shapes) -> List[str]:
    """Pad DCN v1 offset convs in place where the target expects the modulated layout."""
    padded = []
    for name in sorted(state_dict):
        if not (_OFFSET_KEY.fullmatch(name) and name.endswith("weight")):
            continue
        weight = state_dict[name]
        bias_name = name[: -len("weight")] + "bias"
        taps = weight.shape[-1] * weight.shape[-2]
        if weight.shape[0] != 2 * taps or bias_name not in state_dict:
            continue
        if target_shapes is not None and tuple(target_shapes.get(name, ())[:1]) == (2 * taps,):
            continue  # the target is an unmodulated (v1) deformable conv: keep as is
        state_dict[name], state_dict[bias_name] = pad_dcn_v1_offsets(weight, state_dict[bias_name])
        padded.append(name)
    return padded
