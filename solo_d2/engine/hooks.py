"""Training hooks of the SOLO trainer."""

import random

import numpy as np
import torch

from detectron2.engine import HookBase

__all__ = ["RNGStateHook"]


class RNGStateHook(HookBase):
    """Puts the states of Python's, NumPy's and torch's random generators into checkpoints and
    restores them on resume.

    Data augmentation draws from them (in the main process with ``DATALOADER.NUM_WORKERS 0``),
    so a run resumed from iteration k then continues exactly as the uninterrupted run did: same
    images, same augmentations, same losses and weights. With worker processes the images are
    the same but their augmentations are drawn anew.
    """

    def __init__(self):
        self._loaded = None

    def state_dict(self):
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict):
        self._loaded = state_dict
        self.restore()

    def restore(self):
        """Set the generators to the loaded states (again, e.g. after building a data loader)."""
        if self._loaded is None:
            return
        random.setstate(self._loaded["python"])
        np.random.set_state(_numpy_state_from_tensors(self._loaded["numpy"]))
        torch.set_rng_state(self._loaded["torch"])
        if "cuda" in self._loaded and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._loaded["cuda"])


def _numpy_state_to_tensors(state):
    """NumPy's legacy MT19937 state as tensors and numbers, so that checkpoints holding it load
    with ``torch.load(weights_only=True)`` (a NumPy array would need full unpickling)."""
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_from_tensors(state):
    """Inverse of :func:`_numpy_state_to_tensors`; also accepts NumPy's own tuple."""
    if not isinstance(state, dict):
        return state
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"])
