"""Export a SOLO model to ONNX, post-processing included.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter, which traces
:class:`~solo_d2.export.model.ExportableSOLO` once. Why this one:

* tracing records the ops the eager code runs, so the graph *is* the eager recipe
  (``SOLOPostProcessor`` and the heads' ``mask_probs``); the few steps whose eager form cannot
  be recorded switch to a graph form while exporting (``solo_d2.modeling.layers.is_exporting``);
* the data-dependent sizes (candidates K, detections N, both possibly 0) come out as ONNX
  ``NonZero`` / ``TopK`` / ``Shape`` values, and H, W as named dynamic axes, without the
  guards on unbacked sizes that ``torch.export`` (``dynamo=True``) needs for every branch on a
  data-dependent size (and which reject a size that may be 0 or 1);
* ``dynamo=True`` also needs ``onnxscript``, an extra dependency, for no gain here.

The sample image only drives the trace: the graph holds for any H x W and any N, 0 included
(there is no Python branch on N in the traced code). DCN layers (``torchvision::deform_conv2d``)
export as the standard ONNX ``DeformConv`` (opset >= 19), which ONNX Runtime implements.
"""

import copy
import json
import logging
import os
import warnings
from typing import Dict, Optional

import torch
from torch import nn
from torch.onnx import symbolic_helper

from .model import INPUT_DIMS, INPUT_NAMES, OUTPUT_DIMS, OUTPUT_NAMES, ExportableSOLO

__all__ = [
    "DEFAULT_OPSET",
    "DCN_OPSET",
    "METADATA_KEY",
    "ExportError",
    "export_onnx",
    "on_cpu",
    "onnx_signature",
    "register_deform_conv_symbolic",
    "uses_deformable_conv",
]

logger = logging.getLogger(__name__)

#: Default ONNX opset: 19, the first with ``DeformConv`` (DCN configs), run by ONNX Runtime
#: >= 1.16. Plain configs also export at 11..18 (``--opset``).
DEFAULT_OPSET = 19
DCN_OPSET = 19
#: Key of the exported model's metadata (JSON, see ``solo_d2.export.metadata``).
METADATA_KEY = "solo_d2"

DCN_CONFIG_KEYS = (
    "MODEL.SOLO.DCN_TOWER_LAYERS",
    "MODEL.SOLO.USE_DCN_IN_MASK_FEATURES",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
)


class ExportError(RuntimeError):
    """The model cannot be exported as asked (with the reason and what to change)."""


def uses_deformable_conv(model: nn.Module) -> bool:
    """Whether ``model`` has deformable convs (solo_d2's DCNv2 or Detectron2's DeformConv)."""
    from detectron2.layers import DeformConv, ModulatedDeformConv

    from solo_d2.modeling.layers import ModulatedDeformConv2d

    kinds = (ModulatedDeformConv2d, DeformConv, ModulatedDeformConv)
    return any(isinstance(m, kinds) for m in model.modules())


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d_symbolic(
    g,
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    n_weight_grps,
    n_offset_grps,
    use_mask,
):
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19): the same offset layout
    ((dy, dx) per kernel tap and offset group) and modulation mask (tested against torchvision
    in tests/test_export.py)."""
    inputs = [input, weight, offset, bias]
    if use_mask:
        inputs.append(mask)
    return g.op(
        "DeformConv",
        *inputs,
        dilations_i=[dil_h, dil_w],
        group_i=n_weight_grps,
        offset_group_i=n_offset_grps,
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        strides_i=[stride_h, stride_w],
    )


def register_deform_conv_symbolic(opset: int = DCN_OPSET):
    """Export ``torchvision::deform_conv2d`` (every deformable conv of solo_d2 and Detectron2
    runs on it on the CPU) as ONNX ``DeformConv`` at ``opset`` (>= 19)."""
    torch.onnx.register_custom_op_symbolic(
        "torchvision::deform_conv2d", _deform_conv2d_symbolic, opset
    )


def check_opset(model: nn.Module, opset: int):
    """Refuse an opset that cannot hold the model (DCN needs ONNX ``DeformConv``, opset 19)."""
    if opset < 11:
        raise ExportError(f"opset {opset} is too old: the SOLO graph needs opset >= 11")
    if uses_deformable_conv(model) and opset < DCN_OPSET:
        raise ExportError(
            "this config has deformable convs (torchvision::deform_conv2d), which ONNX has only "
            f"as the DeformConv op from opset {DCN_OPSET}: export with --opset {DCN_OPSET} or "
            f"more, or disable DCN ({', '.join(DCN_CONFIG_KEYS)})"
        )


def export_onnx(
    model: nn.Module,
    path: str,
    sample_image: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    metadata: Optional[Dict] = None,
) -> str:
    """Export ``model`` (a SOLO model in eval mode, on the CPU) to the ONNX file ``path``.

    Args:
        sample_image: Float[3, H, W] input of the trace (any content; any N, 0 included).
        opset: ONNX opset (>= 11; >= 19 with deformable convs).
        metadata: JSON-able dict stored under :data:`METADATA_KEY` in the model's
            ``metadata_props`` (read by :class:`~solo_d2.export.predictor.OnnxPredictor`).
    Returns:
        ``path``. The file is checked with ``onnx.checker`` (with shape inference).
    """
    onnx = import_onnx()
    check_opset(model, opset)
    if opset >= DCN_OPSET:
        register_deform_conv_symbolic(opset)
    wrapper = ExportableSOLO(on_cpu(model))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dynamic_axes = {
        name: {axis: dim for axis, dim in enumerate(dims) if isinstance(dim, str)}
        for name, dims in {**INPUT_DIMS, **OUTPUT_DIMS}.items()
    }
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every shape it reads; those that become constants are
        # structural (equal for every input size), see DESIGN.md section 1, "Export".
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*dynamic_axes.*")
        # Advanced indexing exports as Gather: exact for the non-negative indices used here.
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        torch.onnx.export(
            wrapper,
            (sample_image.to(torch.float32),),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(path)
    _name_output_dims(proto)
    if metadata is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.producer_name = "solo_d2"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return path


def on_cpu(model: nn.Module) -> nn.Module:
    """``model``, or a CPU copy of it when it lives on another device (a CUDA model): the graph
    is traced on the CPU, and the model given stays where it is."""
    if all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers())):
        return model
    return copy.deepcopy(model).to("cpu")


def _name_output_dims(proto):
    """Write :data:`OUTPUT_DIMS` into the graph outputs (the exporter names some static dims)."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims, OUTPUT_DIMS[output.name]):
            dim.Clear()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def onnx_signature(path: str) -> Dict[str, Dict[str, list]]:
    """{"inputs": {name: [dtype, dims]}, "outputs": ...} of an ONNX file, dims as ints or names."""
    onnx = import_onnx()
    graph = onnx.load(path, load_external_data=False).graph

    def describe(values):
        result = {}
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            result[value.name] = [onnx.TensorProto.DataType.Name(tensor.elem_type), dims]
        return result

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def import_onnx():
    """The ``onnx`` package, or an error saying how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'solo_d2[export]' "
            "(or pip install onnx onnxruntime)"
        ) from e
    return onnx
