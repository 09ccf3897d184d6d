"""Detectron2 checkpointing for SOLO models: safe reading, published layouts, strict loading.

:class:`SOLOCheckpointer` is Detectron2's ``DetectionCheckpointer`` with three differences:

1. weight files are read without running code from them (:mod:`.weights_file`);
2. checkpoints in the layouts published by the original SOLO code, AdelaiDet and mmdetection
   are converted on load (:mod:`.convert`), so ``MODEL.WEIGHTS`` can name a released file or
   its URL (Detectron2's ``PathManager`` downloads and caches URLs);
3. missing, unexpected and shape-mismatched keys are reported as one warning, and are an error
   when loading strictly (by default: when the model is in eval mode, as in ``--eval-only``
   and ``DefaultPredictor``). When fine-tuning on another class count, only the
   class-dependent category output layer is left out, with a message saying so;
4. checkpoints and the ``last_checkpoint`` tag are written atomically (a temporary file, then a
   rename), so a run killed while saving leaves the previous checkpoint intact.

:func:`register_checkpoint_formats` (run by ``import solo_d2``) gives Detectron2's own
``DetectionCheckpointer`` the same behaviour **for SOLO models only**, so that code which builds
one itself (``DefaultPredictor``, ``DefaultTrainer``) loads released files too. Checkpointers of
other models are untouched.
"""

import logging
import os
from typing import Any, Dict, List, Optional

import torch

from fvcore.common.checkpoint import (
    _filter_reused_missing_keys,
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)

from detectron2.checkpoint import DetectionCheckpointer

from .convert import convert_checkpoint, detect_source, unwrap_state_dict
from .weights_file import load_weights_file

__all__ = [
    "CheckpointMismatchError",
    "SOLOCheckpointer",
    "read_solo_checkpoint",
    "register_checkpoint_formats",
]

logger = logging.getLogger(__name__)

# Detectron2's implementations, captured before register_checkpoint_formats() wraps them.
_D2_LOAD_FILE = DetectionCheckpointer._load_file
_D2_LOG_INCOMPATIBLE_KEYS = DetectionCheckpointer._log_incompatible_keys


class CheckpointMismatchError(RuntimeError):
    """Strict loading found keys that do not match the model."""


def _is_solo(model) -> bool:
    from ..modeling.meta_arch import SOLO

    return isinstance(model, SOLO)


def read_solo_checkpoint(
    filename: str, *, trust_pickle: bool = False, target_shapes=None
) -> Dict[str, Any]:
    """Read a local checkpoint file into Detectron2's ``{"model": state dict, ...}`` form.

    Published SOLO layouts are converted to solo_d2 names (``target_shapes``, a name -> shape
    mapping of the model, decides the DCN v1 offset layout); Detectron2 / solo_d2 files are
    returned as Detectron2 reads them (``.pkl`` model-zoo and Caffe2 files included).
    """
    data = load_weights_file(filename, trust_pickle=trust_pickle)
    if not isinstance(data, dict):
        raise TypeError(f"{filename!r} holds a {type(data).__name__}, not a checkpoint dict")
    if filename.endswith(".pkl") and not ("model" in data and "__author__" in data):
        # Caffe2 / Detectron1 model zoo, as DetectionCheckpointer reads it
        data = data.get("blobs", data)
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    if "model" in data and "__author__" in data:
        return data  # Detectron2 model-zoo format
    weights, _ = unwrap_state_dict(data)
    source = detect_source(weights)
    if source is None:  # Detectron2 / solo_d2 names
        return data if "model" in data else {"model": weights}
    converted = convert_checkpoint(data, source, target_shapes)
    logger.info(
        "Converted %d tensors of %s from the %s layout (dropped by rule: %d%s)",
        len(converted.state_dict),
        filename,
        source,
        len(converted.dropped),
        (
            f"; DCN v1 offsets padded: {len(converted.padded_dcn_v1)}"
            if converted.padded_dcn_v1
            else ""
        ),
    )
    return {"model": converted.state_dict, "__author__": f"solo_d2 converter ({source})"}


def _write_atomically(path: str, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it to ``path``."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _load_file(checkpointer, filename: str) -> Dict[str, Any]:
    if filename.endswith(".pyth"):  # pycls files: Detectron2's reader
        return _D2_LOAD_FILE(checkpointer, filename)
    model = checkpointer.model
    trust = getattr(checkpointer, "trust_pickle", None)
    if trust is None:
        trust = getattr(model, "trust_weights_pickle", False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return read_solo_checkpoint(filename, trust_pickle=trust, target_shapes=shapes)


def _class_dependent_keys(model) -> List[str]:
    return [f"head.cate_pred.{name}" for name, _ in model.head.cate_pred.named_parameters()]


def _report_incompatible_keys(checkpointer, incompatible) -> None:
    """One warning listing every mismatch (an error when loading strictly)."""
    model = checkpointer.model
    strict = getattr(checkpointer, "strict", None)
    if strict is None:
        strict = not model.training
    class_keys = set(_class_dependent_keys(model))
    shapes = list(incompatible.incorrect_shapes)
    class_shapes = [s for s in shapes if s[0] in class_keys]
    if class_shapes and not strict:
        shapes = [s for s in shapes if s[0] not in class_keys]
        logger.warning(
            "Fine-tuning on another class count: the checkpoint's category output layer has "
            "%d classes, the model %d (MODEL.SOLO.NUM_CLASSES); %s are not loaded and keep "
            "their initialisation.",
            class_shapes[0][1][0],
            class_shapes[0][2][0],
            ", ".join(s[0] for s in class_shapes),
        )
    missing = _filter_reused_missing_keys(model, list(incompatible.missing_keys))
    if not strict:  # keys left out for fine-tuning are expected to be missing
        missing = [k for k in missing if not (class_shapes and k in class_keys)]
    problems = []
    if shapes:
        problems.append(
            "Shape mismatch (checkpoint vs model, not loaded):\n"
            + "\n".join(f"  {k}: {tuple(c)} vs {tuple(m)}" for k, c, m in shapes)
        )
    if missing:
        problems.append(get_missing_parameters_message(missing))
    if incompatible.unexpected_keys:
        problems.append(get_unexpected_parameters_message(list(incompatible.unexpected_keys)))
    if not problems:
        return
    message = "The checkpoint does not match the SOLO model.\n" + "\n".join(problems)
    if strict:
        raise CheckpointMismatchError(
            message + "\nLoading for inference is strict: use the config the checkpoint was "
            "trained or converted for."
        )
    logger.warning(message)


class SOLOCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for SOLO models (see the module docstring).

    Args:
        strict: raise :class:`CheckpointMismatchError` on any missing, unexpected or
            shape-mismatched key; None (default): strict when the model is in eval mode.
        trust_pickle: allow full unpickling of files the safe readers refuse; None (default):
            the model's ``MODEL.SOLO.TRUST_WEIGHTS_PICKLE``.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        strict: Optional[bool] = None,
        trust_pickle: Optional[bool] = None,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.trust_pickle = trust_pickle

    def _load_file(self, filename):
        return _load_file(self, filename)

    def save(self, name: str, **kwargs) -> None:
        """Save ``<save_dir>/<name>.pth`` atomically (as fvcore's ``save`` otherwise)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        _write_atomically(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(path, lambda f: f.write(last_filename_basename.encode()))

    def _log_incompatible_keys(self, incompatible):
        _report_incompatible_keys(self, incompatible)


def register_checkpoint_formats() -> None:
    """Make ``DetectionCheckpointer`` behave like :class:`SOLOCheckpointer` for SOLO models.

    Idempotent. Checkpointers of any other model keep Detectron2's behaviour.
    """
    if getattr(DetectionCheckpointer, "_solo_d2_formats", False):
        return

    def load_file(self, filename):
        if _is_solo(self.model):
            return _load_file(self, filename)
        return _D2_LOAD_FILE(self, filename)

    def log_incompatible_keys(self, incompatible):
        if _is_solo(self.model):
            return _report_incompatible_keys(self, incompatible)
        return _D2_LOG_INCOMPATIBLE_KEYS(self, incompatible)

    DetectionCheckpointer._load_file = load_file
    DetectionCheckpointer._log_incompatible_keys = log_incompatible_keys
    DetectionCheckpointer._solo_d2_formats = True
