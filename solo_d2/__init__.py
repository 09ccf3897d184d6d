"""solo_d2: SOLO instance segmentation as a Detectron2 project.

Importing the package applies the library shims the installed versions need
(:mod:`solo_d2.compat`), registers the ``SOLO`` meta-architecture, its heads and the names of the
embedded ``shapes_train`` / ``shapes_val`` datasets (located and generated when first loaded),
and lets Detectron2's checkpointer read published SOLO checkpoints for SOLO models
(:mod:`solo_d2.checkpoint`). It reads and writes no file (docs/DESIGN.md, section 1).
"""

from . import compat  # noqa: F401  (must run before any other detectron2 import)
from .compat import HAS_D2_CPP_OPS
from .config import add_solo_config
from . import data  # noqa: F401  (registers the embedded datasets)
from . import modeling  # noqa: F401  (registers the SOLO meta-architecture)
from .checkpoint import SOLOCheckpointer, register_checkpoint_formats
from .data import register_coco_dataset
from .evaluation import build_evaluator
from .modeling import SOLO, build_solo_targets, build_solov2_targets, matrix_nms, points_nms

# DetectionCheckpointer (DefaultPredictor, DefaultTrainer) reads published SOLO checkpoints and
# loads strictly, for SOLO models only (solo_d2.checkpoint.checkpointer).
register_checkpoint_formats()

__version__ = "0.1.0"
__all__ = [
    "HAS_D2_CPP_OPS",
    "SOLO",
    "SOLOCheckpointer",
    "add_solo_config",
    "build_evaluator",
    "build_solo_targets",
    "build_solov2_targets",
    "matrix_nms",
    "points_nms",
    "register_coco_dataset",
]
