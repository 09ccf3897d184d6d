"""Training augmentations that solo_d2 adds to Detectron2's (``INPUT.*`` keys of
:func:`solo_d2.add_solo_config`)."""

from typing import Sequence

from detectron2.data import transforms as T

__all__ = ["build_extra_train_augmentations"]


def build_extra_train_augmentations(cfg) -> list:
    """The augmentations applied after Detectron2's resize and flip during training.

    ``INPUT.RANDOM_ROTATION_ANGLES`` (e.g. ``[0, 90, 180, 270]``): each training image is
    rotated counter-clockwise by one of the angles, drawn uniformly, with its masks, polygons and
    boxes. Only multiples of 90 are accepted: those rotations map pixels onto pixels (no
    interpolation, nothing cut off; at 90 and 270 the image's height and width swap).
    """
    angles = _rotation_angles(cfg.INPUT.RANDOM_ROTATION_ANGLES)
    if not angles or set(angles) == {0}:
        return []
    return [T.RandomRotation(angles, expand=True, sample_style="choice")]


def _rotation_angles(angles: Sequence) -> list:
    bad = [a for a in angles if not isinstance(a, (int, float)) or a % 90 != 0]
    if bad:
        raise ValueError(
            f"INPUT.RANDOM_ROTATION_ANGLES must hold multiples of 90 degrees, got {list(angles)}"
        )
    return [int(a) % 360 for a in angles]
