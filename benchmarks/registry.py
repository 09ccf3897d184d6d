"""Plug-in points of the benchmark: sections and memory cases, registered by name.

A **section** is one comparison, selected with ``tools/benchmark.py --sections NAME``. Its
``run(settings, memory)`` times its variants (:func:`~benchmarks.measure.alternate`),
requests the peak memory of each configuration from ``memory``
(:class:`~benchmarks.measure.MemoryPlan`) and returns its rows, stored as
``results[NAME]`` in bench.json; its ``table(results)`` renders them as Markdown for bench.md.

A **memory case** kind builds one configuration, described by a JSON-able dict
``{"kind": KIND, ...}``, in the fresh process that measures its peak memory
(:func:`~benchmarks.measure.measure_memory_case`).

Every module of :mod:`benchmarks.sections` is imported with the package, so a new
comparison is one new module there that registers its section (and its memory cases).
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from .settings import Settings

__all__ = [
    "Section",
    "MemoryCase",
    "register_section",
    "registered_sections",
    "register_memory_case",
    "build_memory_case",
]


@dataclass(frozen=True)
class Section:
    """A registered comparison: ``run(settings, memory) -> rows``, ``table(results) -> str``
    (None: the rows are in bench.json only); sections run in ascending ``order``; ``default``
    sections run without ``--sections`` (long ones are asked for by name)."""

    name: str
    order: int
    run: Callable[[Settings, Any], List[Dict]]  # (settings, measure.MemoryPlan) -> rows
    table: Optional[Callable[[Dict], str]] = None
    default: bool = True


class MemoryCase(NamedTuple):
    """One configuration built in the measuring process.

    ``step`` is run twice (warm-up and one more) under an ``EventStorage``; ``prepare``, if
    any, runs after the base memory is read and before the steps (e.g. the inference load).
    """

    step: Callable[[], Any]
    prepare: Optional[Callable[[], Any]] = None


_SECTIONS: Dict[str, Section] = {}
_MEMORY_CASES: Dict[str, Callable[[Settings, Dict], MemoryCase]] = {}


def register_section(
    name: str, order: int, table: Optional[Callable[[Dict], str]] = None, default: bool = True
):
    """Decorator: register ``run(settings, memory) -> rows`` as the section ``name``.

    ``order`` places it among the others (the built-in ones are 10 to 40): sections run and are
    tabulated in that order, whatever the order of ``--sections``. A section with
    ``default=False`` runs only when ``--sections`` names it.
    """

    def register(run):
        if name in _SECTIONS:
            raise ValueError(f"benchmark section {name!r} is registered twice")
        _SECTIONS[name] = Section(name, order, run, table, default)
        return run

    return register


def registered_sections() -> Dict[str, Section]:
    """The registered sections by name, in run order."""
    return {s.name: s for s in sorted(_SECTIONS.values(), key=lambda s: s.order)}


def register_memory_case(kind: str):
    """Decorator: register ``build(settings, case) -> MemoryCase`` for cases of ``kind``."""

    def register(build):
        if kind in _MEMORY_CASES:
            raise ValueError(f"memory case kind {kind!r} is registered twice")
        _MEMORY_CASES[kind] = build
        return build

    return register


def build_memory_case(settings: Settings, case: Dict) -> MemoryCase:
    """Build the configuration of ``case`` with the builder registered for ``case["kind"]``."""
    if case["kind"] not in _MEMORY_CASES:
        raise KeyError(f"unknown memory case kind {case['kind']!r}, known: {sorted(_MEMORY_CASES)}")
    return _MEMORY_CASES[case["kind"]](settings, case)
