"""Reading weight files without running code from them.

``torch.load(weights_only=True)`` and a restricted unpickler for Detectron2's ``.pkl`` files only
rebuild tensors, NumPy arrays and plain Python containers. A file that needs more (arbitrary
classes or functions) is refused with :class:`UntrustedWeightsFileError` unless the caller
explicitly trusts it (``MODEL.SOLO.TRUST_WEIGHTS_PICKLE`` / ``--trust-pickle``).
"""

import collections
import contextlib
import logging
import pickle
from typing import Any, List

import numpy as np
import torch

from detectron2.utils.file_io import PathManager

__all__ = ["UntrustedWeightsFileError", "load_weights_file"]

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "Full unpickling runs code stored in the file. Only if you trust where it comes from, set "
    "MODEL.SOLO.TRUST_WEIGHTS_PICKLE True (or convert it once with "
    "`tools/convert_solo_checkpoint.py --trust-pickle IN OUT`, which writes a safe copy)."
)

# NumPy pieces that checkpoints store (arrays, scalars such as a seed in mmdet's metadata),
# under their NumPy 1 and NumPy 2 module paths. They rebuild data, never call anything else.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_PLAIN_GLOBALS = {("collections", "OrderedDict")}


class UntrustedWeightsFileError(pickle.UnpicklingError):
    """A weights file that cannot be read without full (code-running) unpickling."""


def _numpy_attr(module: str, name: str):
    """The NumPy object that a pickle names ``module.name`` (NumPy 1 or 2 paths)."""
    obj = np
    for part in module.split(".")[1:]:
        part = {"core": "_core"}.get(part, part) if not hasattr(obj, part) else part
        obj = getattr(obj, part)
    return getattr(obj, name)


def _torch_safe_numpy_globals() -> List:
    # dtype classes of NumPy >= 1.25 (numbers, bools, strings; not object arrays)
    dtypes = getattr(np, "dtypes", None)
    safe = [
        getattr(dtypes, name)
        for name in dir(dtypes)
        if name.endswith("DType") and name != "ObjectDType"
    ]
    for module, name in sorted(_NUMPY_GLOBALS):
        try:
            safe.append((_numpy_attr(module, name), f"{module}.{name}"))
        except AttributeError:  # pragma: no cover - a NumPy without that path
            continue
    return safe


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for Detectron2 ``.pkl`` weights: NumPy arrays and plain containers only."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_attr(module, name)
        if (module, name) in _PLAIN_GLOBALS:
            return collections.OrderedDict
        raise UntrustedWeightsFileError(f"it needs the Python global {module}.{name}")


def _unsafe_globals(path: str) -> str:
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is None:  # torch < 2.5
        return "unknown"
    with contextlib.suppress(Exception):
        return ", ".join(find(path)) or "none found"
    return "unknown"


def load_weights_file(path: str, *, trust_pickle: bool = False) -> Any:
    """Load a local weights file (``.pkl``: pickled NumPy; anything else: ``torch.save`` file).

    Args:
        path: a local file (URLs are resolved by the caller, e.g. Detectron2's checkpointer).
        trust_pickle: allow full unpickling when the safe readers refuse the file.
    Raises:
        UntrustedWeightsFileError: the file needs full unpickling and ``trust_pickle`` is False.
    """
    if path.endswith(".pkl"):
        try:
            with PathManager.open(path, "rb") as f:
                return _RestrictedUnpickler(f, encoding="latin1").load()
        except UntrustedWeightsFileError as e:
            if not trust_pickle:
                raise UntrustedWeightsFileError(
                    f"refusing to unpickle {path!r}: {e}. {TRUST_HINT}"
                ) from None
            logger.warning("Fully unpickling %s (trusted by configuration)", path)
            with PathManager.open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
    try:
        with torch.serialization.safe_globals(_torch_safe_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UntrustedWeightsFileError(
                f"{path!r} cannot be loaded with torch.load(weights_only=True): it stores Python "
                f"objects other than tensors and containers (globals: {_unsafe_globals(path)}). "
                + TRUST_HINT
            ) from e
        logger.warning("Loading %s with weights_only=False (trusted by configuration)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
