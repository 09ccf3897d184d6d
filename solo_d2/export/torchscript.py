"""Export a SOLO model to TorchScript, post-processing included.

``torch.jit.trace`` of :class:`~solo_d2.export.model.ExportableSOLO`: the same trace as the
ONNX export (see :mod:`solo_d2.export.onnx`), kept as TorchScript. ``torch.jit.script`` is not
used: Detectron2's structures and the heads' Python containers are not scriptable, and the
traced graph already holds for any input size and any number of detections (0 included),
because the traced code has no Python branch on them. Its results equal eager PyTorch's up to
float rounding (mostly bit for bit on the CPU). Deformable convs are recorded as
``torchvision::deform_conv2d``: import ``torchvision`` before :func:`load_torchscript` (it does)
to run them.
"""

import json
import os
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .model import ExportableSOLO

__all__ = ["export_torchscript", "load_torchscript", "EXTRA_FILE"]

#: Name of the metadata JSON stored in the TorchScript archive (``_extra_files``).
EXTRA_FILE = "solo_d2.json"


def export_torchscript(
    model: nn.Module, path: str, sample_image: torch.Tensor, metadata: Optional[Dict] = None
) -> str:
    """Trace ``model`` (a SOLO model in eval mode) on ``sample_image`` Float[3, H, W] and save
    the ``image -> (masks, scores, classes, boxes)`` module to ``path``, with ``metadata``
    (JSON) as the extra file :data:`EXTRA_FILE`. Returns ``path``."""
    from .onnx import on_cpu

    wrapper = ExportableSOLO(on_cpu(model))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Shapes read while tracing are structural (equal for every input size).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(wrapper, (sample_image.to(torch.float32),), check_trace=False)
        extra = {EXTRA_FILE: json.dumps(metadata or {})}
        torch.jit.save(traced, path, _extra_files=extra)
    return path


def load_torchscript(path: str, map_location="cpu") -> Tuple[torch.jit.ScriptModule, Dict]:
    """The exported module and its metadata dict."""
    import torchvision  # noqa: F401  (registers torchvision::deform_conv2d for DCN models)

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        module = torch.jit.load(path, map_location=map_location, _extra_files=extra)
    return module, json.loads(extra[EXTRA_FILE] or "{}")
