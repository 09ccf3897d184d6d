"""Make Detectron2 v0.6 (pure-Python install, no C++ ops) import and run on current libraries.

Imported first by :mod:`solo_d2`. Every shim is applied only where it is needed, so with an
official Detectron2 that has its compiled ``detectron2._C`` (and current sources) this module
changes nothing but setting :data:`HAS_D2_CPP_OPS` to True.

Shims:

* ``detectron2._C``: when the compiled ops are missing, a placeholder module is set so that
  v0.6's module-level ``from detectron2 import _C`` (deformable conv, rotated boxes,
  ROIAlignRotated, the fast COCO evaluator) imports; *using* any op raises an ``ImportError``
  that says what is missing. SOLO needs none of them.
* ``detectron2.layers.ModulatedDeformConv`` (DCNv2 in ResNet stages,
  ``MODEL.RESNETS.DEFORM_MODULATED``): without the C++ ops it runs on
  ``torchvision.ops.deform_conv2d`` (CPU and CUDA), as v0.6 already does for the
  non-modulated ``DeformConv`` on CPU. Same offset/mask layout, same result.
* ``PIL.Image.LINEAR``: removed in Pillow 10 but used as a default argument by v0.6's
  ``ExtentTransform``; aliased to ``Image.BILINEAR`` (what it always meant).
* ``numpy.int`` / ``numpy.float``: removed in NumPy 1.24 but used by v0.6's dataset histogram
  and evaluators; aliased to the builtins they always were. (``np.bool`` is back in NumPy 2.)
"""

import importlib.util
import types
import warnings

import numpy as np
from PIL import Image

__all__ = ["HAS_D2_CPP_OPS", "MISSING_CPP_OPS_MESSAGE", "cpp_ops_available"]

MISSING_CPP_OPS_MESSAGE = (
    "detectron2 was installed without its C++ ops; rotated boxes, deformable conv and the fast "
    "COCO evaluator are unavailable. Install detectron2 from source with its C++/CUDA ops to "
    "use them."
)


class _MissingCppOps(types.ModuleType):
    """Placeholder for ``detectron2._C``: importable, but every attribute access fails clearly."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):  # keep import machinery / pickling sane
            raise AttributeError(name)
        raise ImportError(f"{MISSING_CPP_OPS_MESSAGE} (requested: detectron2._C.{name})")


def cpp_ops_available() -> bool:
    """True if Detectron2's compiled extension ``detectron2._C`` is really installed."""
    return importlib.util.find_spec("detectron2._C") is not None


def _install_placeholder_ops():
    """Set ``detectron2._C`` to the placeholder as a package attribute only.

    ``from detectron2 import _C`` (what v0.6's modules do) then finds it, while
    ``import detectron2._C`` and ``find_spec`` still report the module as missing, which is
    what detectron2's environment report and :func:`cpp_ops_available` rely on.
    """
    import detectron2

    placeholder = _MissingCppOps("detectron2._C", MISSING_CPP_OPS_MESSAGE)
    detectron2._C = placeholder


def _torchvision_modulated_deform_conv(
    input,
    offset,
    mask,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    deformable_groups=1,
):
    """Drop-in for v0.6's ``modulated_deform_conv`` (groups are implied by the tensor shapes)."""
    from torchvision.ops import deform_conv2d

    return deform_conv2d(
        input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
    )


def _install_deform_conv_fallback():
    from detectron2.layers import deform_conv

    deform_conv.modulated_deform_conv = _torchvision_modulated_deform_conv


def _install_library_aliases():
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
    for name, builtin in (("int", int), ("float", float), ("bool", bool)):
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, builtin)


# detectron2 scripts a few helpers with torch.jit.script at import; recent torch warns for each.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)
HAS_D2_CPP_OPS = cpp_ops_available()
if not HAS_D2_CPP_OPS:
    _install_placeholder_ops()
    _install_deform_conv_fallback()
_install_library_aliases()
