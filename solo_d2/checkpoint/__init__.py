"""Checkpoints: reading weight files safely, converting the published SOLO checkpoints
(original code, AdelaiDet, mmdetection) and loading them strictly into SOLO models."""

from .checkpointer import (
    CheckpointMismatchError,
    SOLOCheckpointer,
    read_solo_checkpoint,
    register_checkpoint_formats,
)
from .convert import (
    SOURCES,
    CheckpointConversionError,
    ConvertedCheckpoint,
    convert_checkpoint,
    detect_source,
)
from .model_zoo import RELEASED_MODELS, ReleasedModel, released_model
from .weights_file import UntrustedWeightsFileError, load_weights_file

__all__ = [
    "RELEASED_MODELS",
    "SOURCES",
    "CheckpointConversionError",
    "CheckpointMismatchError",
    "ConvertedCheckpoint",
    "ReleasedModel",
    "SOLOCheckpointer",
    "UntrustedWeightsFileError",
    "convert_checkpoint",
    "detect_source",
    "load_weights_file",
    "read_solo_checkpoint",
    "register_checkpoint_formats",
    "released_model",
]
