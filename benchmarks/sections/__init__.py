"""The benchmark's sections, one comparison each; every module here is a plug-in.

Importing this package imports all its modules, which register their sections and memory cases
(:mod:`benchmarks.registry`): ``targets`` (target builder vs the dense baseline),
``maskhead`` and ``train`` (training steps), ``infer`` (inference latency). A new section is a
new module here; no other module changes.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
