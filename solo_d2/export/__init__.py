"""Deployment: SOLO / SOLOv2 as ONNX or TorchScript graphs with the post-processing inside.

* :class:`ExportableSOLO` (``model.py``): ``image`` Float[3, H, W] -> ``masks`` Bool[N, H, W],
  ``scores`` Float[N], ``classes`` Int64[N], ``boxes`` Float[N, 4], the model's own eager code
  traced once (``SOLOPostProcessor`` included).
* :func:`export_onnx` (``onnx.py``), :func:`export_torchscript` / :func:`load_torchscript`
  (``torchscript.py``), and :func:`export_from_config` (``api.py``, used by
  ``tools/export_model.py``).
* :class:`OnnxPredictor` (``predictor.py``): runs an exported ONNX file like
  ``DefaultPredictor`` with ONNX Runtime.

The ONNX file runs in ONNX Runtime alone (no torch, Detectron2 or solo_d2 import). ``onnx`` /
``onnxruntime`` come with ``pip install 'solo_d2[export]'``; they are imported only when used.
"""

from .api import FORMATS, build_export_model, export_from_config, export_metadata, sample_image
from .model import INPUT_NAMES, OUTPUT_NAMES, ExportableSOLO
from .onnx import DEFAULT_OPSET, ExportError, export_onnx, onnx_signature
from .predictor import OnnxPredictor
from .torchscript import export_torchscript, load_torchscript

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExportError",
    "ExportableSOLO",
    "OnnxPredictor",
    "build_export_model",
    "export_from_config",
    "export_metadata",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
    "onnx_signature",
    "sample_image",
]
