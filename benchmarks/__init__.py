"""The benchmark behind ``tools/benchmark.py`` (docs/BENCHMARKS.md): speed and memory of
solo_d2 against a dense target baseline and Detectron2's Mask R-CNN, and accuracy at equal
training time.

A package of the repository, not of the installed ``solo_d2`` (it is not shipped with it): run
it through ``tools/benchmark.py`` or from the repository root. Imports go one way:
``settings``, then ``registry``, ``cases`` and ``dense_baseline``, then ``measure`` and
``report``, then ``sections`` (tested: no module imports one that imports it back).

* :mod:`.settings`: model names and configs, :class:`Settings` (sizes and repeats).
* :mod:`.cases`: random inputs, the benchmark models (calibrated backbones, inference load,
  the all-channel SOLO variant), training and inference steps.
* :mod:`.dense_baseline`: the original per-object SOLO target builder.
* :mod:`.measure`: alternating timing, peak memory in fresh subprocesses.
* :mod:`.report`: checks, Markdown tables, the summary figure.
* :mod:`.registry` and :mod:`.sections`: the comparisons (``--sections``) as plug-ins.
"""

import solo_d2  # noqa: F401  (compat shims before any detectron2 import)

from . import sections  # noqa: F401  (registers the sections and memory cases)
from .cases import (
    AllChannelSOLO,
    GtJitteredProposals,
    add_inference_load,
    calibrate_frozen_bn,
    infer_step,
    make_model,
    model_config,
    model_inputs,
    prepare_infer,
    prepare_train,
    random_instances,
    target_inputs,
    train_step,
)
from .measure import MemoryPlan, alternate, measure_memory_case
from .registry import (
    MemoryCase,
    Section,
    register_memory_case,
    register_section,
    registered_sections,
)
from .report import evaluate_checks, machine_info, plot, render_tables
from .settings import MODELS, Settings

__all__ = [
    "AllChannelSOLO",
    "GtJitteredProposals",
    "MODELS",
    "MemoryCase",
    "MemoryPlan",
    "Section",
    "Settings",
    "add_inference_load",
    "alternate",
    "calibrate_frozen_bn",
    "evaluate_checks",
    "infer_step",
    "machine_info",
    "make_model",
    "measure_memory_case",
    "model_config",
    "model_inputs",
    "plot",
    "prepare_infer",
    "prepare_train",
    "random_instances",
    "register_memory_case",
    "register_section",
    "registered_sections",
    "render_tables",
    "target_inputs",
    "train_step",
]
