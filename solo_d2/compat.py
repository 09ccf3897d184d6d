"""Make Detectron2 v0.6 (pure-Python install, no C++ ops) import and run on current libraries.

Imported first by :mod:`solo_d2`. This module is the one place where solo_d2 changes other
libraries: :data:`SHIMS` lists every change with the test that decides whether the installed
versions need it, and only those are applied (:data:`APPLIED_SHIMS`). With an official
Detectron2 that has its compiled ``detectron2._C`` and current sources, on NumPy < 1.24 and
Pillow < 10, nothing is applied.

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
  and evaluators (``numpy.bool`` too, absent in NumPy 1.24-1.26); aliased to the builtins
  they always were.
* a warnings filter for the ``torch.jit.script`` deprecation that torch >= 2.8 reports for each
  helper Detectron2 scripts at import.
"""

import importlib.util
import types
import warnings
from typing import Callable, List, NamedTuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "APPLIED_SHIMS",
    "HAS_D2_CPP_OPS",
    "MISSING_CPP_OPS_MESSAGE",
    "SHIMS",
    "cpp_ops_available",
]

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


def _install_pillow_linear():
    Image.LINEAR = Image.BILINEAR


def _install_numpy_aliases():
    for name, builtin in (("int", int), ("float", float), ("bool", bool)):
        if not hasattr(np, name):
            setattr(np, name, builtin)


def _silence_jit_script_deprecation():
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )


class Shim(NamedTuple):
    """A change to another library, applied only when ``needed()``."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], None]


#: Every change solo_d2 makes to other libraries (see the module docstring), in the order
#: they are applied.
SHIMS = (
    Shim(
        "torch.jit.script deprecation warnings",
        lambda: tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 8),
        _silence_jit_script_deprecation,
    ),
    Shim("detectron2._C placeholder", lambda: not cpp_ops_available(), _install_placeholder_ops),
    Shim(
        "ModulatedDeformConv on torchvision",
        lambda: not cpp_ops_available(),
        _install_deform_conv_fallback,
    ),
    Shim("PIL.Image.LINEAR", lambda: not hasattr(Image, "LINEAR"), _install_pillow_linear),
    Shim(
        "numpy.int / numpy.float / numpy.bool",
        lambda: not all(hasattr(np, name) for name in ("int", "float", "bool")),
        _install_numpy_aliases,
    ),
)


def _apply_needed(shims) -> List[str]:
    applied = []
    for shim in shims:
        if shim.needed():
            shim.apply()
            applied.append(shim.name)
    return applied


#: Names of the shims this installation needed (applied when solo_d2 was imported).
APPLIED_SHIMS = _apply_needed(SHIMS)
#: True when detectron2 has its compiled C++/CUDA ops (then the fast COCO evaluator is used).
HAS_D2_CPP_OPS = cpp_ops_available()
