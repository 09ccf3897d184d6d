#!/usr/bin/env python
"""Speed and memory of solo_d2 against a dense baseline and Detectron2's Mask R-CNN.

    python tools/benchmark.py [--device cpu|cuda] [--threads N] [--output output/bench]
                              [--sections targets maskhead train infer] [--quick]

Comparisons (docs/BENCHMARKS.md explains them and the numbers), one registered section each
(``benchmarks/sections/``):

* ``targets``: ``build_solo_targets`` vs the dense per-object baseline
  (``benchmarks/dense_baseline.py``) on padded 800x1216 images with 5, 20 and 50 random
  instances; both are checked to give identical targets before timing.
* ``maskhead``: SOLO R50-FPN training step, positive-only mask loss (solo_d2) vs the original
  all-channel loss (``AllChannelSOLO``).
* ``train``: training step (forward, backward, SGD step) of SOLO, Decoupled SOLO, SOLOv2 and
  Detectron2's Mask R-CNN, all R50-FPN, batch 1 and 2 at 512x683.
* ``infer``: inference latency of the same models at 800x1216, batch 1.

Sections run only when ``--sections`` names them:

* ``export``: the exported ONNX graph in ONNX Runtime vs PyTorch eager (SOLO, SOLOv2 R50).
* ``large``: inference on a 4000 x 3000 photo, masks returned at full size: latency, peak memory.
* ``distributed``: training throughput with 1 and 2 processes (``train_net.py --num-gpus``).
* ``amp``: training steps in float32 against mixed precision (bfloat16; float16 on CUDA).
* ``accuracy``: SOLOv2 and Mask R-CNN (model-zoo settings, and tuned) trained with the same
  backbone, data and wall-clock budget on two embedded cases; mask AP against time
  (``make bench-accuracy``). ``accuracy-sweep``: the tuning of Mask R-CNN behind it.

Random weights would make the models do unrealistically little work, so every backbone gets
calibrated FrozenBN statistics, the SOLO models ~300 inference candidates with non-empty masks,
and Mask R-CNN ``SCORE_THRESH_TEST 0`` (100 detections) and its usual foreground ROIs in
training (``benchmarks.cases``).

Each comparison runs in one process, alternating between its variants: warm-up, then the
median of several repeats. Peak memory of every configuration is measured in a fresh
subprocess (``--measure-memory CASE``): max RSS on CPU, ``torch.cuda.max_memory_allocated``
on CUDA. Writes ``bench.json``, ``bench.md`` (the tables) and ``benchmarks.png`` to
``--output``. ``--quick`` runs tiny models and sizes with one repeat (a smoke test).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Dict

import torch

# benchmarks/ is a package of this repository, not of the installed solo_d2: it is imported from
# the checkout this script belongs to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import (  # noqa: E402
    MODELS,
    MemoryPlan,
    Settings,
    evaluate_checks,
    machine_info,
    measure_memory_case,
    plot,
    registered_sections,
    render_tables,
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"default: {default_device}")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch.set_num_threads for every model (default: %(default)s)",
    )
    parser.add_argument("--output", default="output/bench", help="folder for JSON, tables, PNG")
    sections = registered_sections()
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(sections),
        default=[name for name, section in sections.items() if section.default],
        help="default: %(default)s",
    )
    parser.add_argument(
        "--accuracy-budget",
        type=float,
        help="wall-clock seconds per model of the accuracy sections, evaluations included "
        "(default 480, --quick 20; accuracy-sweep: half)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models of the train / infer comparisons",
    )
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default 1, --quick 0)")
    parser.add_argument("--repeats", type=int, help="timed rounds of the models (default 3)")
    parser.add_argument(
        "--target-repeats", type=int, help="timed rounds of the targets (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, 1 repeat")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--memory-jobs",
        type=int,
        default=2,
        help="memory subprocesses run at a time, after all timing (default 2)",
    )
    parser.add_argument("--measure-memory", metavar="CASE", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> Dict:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings.from_args(args)
    if args.measure_memory:
        print(json.dumps(measure_memory_case(settings, json.loads(args.measure_memory))))
        return {}

    start = time.perf_counter()
    results = {"machine": machine_info(settings), "settings": asdict(settings)}
    print(f"solo_d2 benchmark: {results['machine']}", flush=True)
    # Memory cases run this script again (--measure-memory) in fresh processes.
    memory = MemoryPlan(settings, [sys.executable, os.path.abspath(__file__)], args.memory_jobs)
    for name, section in registered_sections().items():
        if name in settings.sections:
            print(f"[{name}]", flush=True)
            results[name] = section.run(settings, memory)
    memory.run()
    results["checks"] = [{**asdict(c), "verdict": c.verdict} for c in evaluate_checks(results)]
    results["total_seconds"] = round(time.perf_counter() - start, 1)

    os.makedirs(args.output, exist_ok=True)
    tables = render_tables(results)
    print("\n" + tables)
    with open(os.path.join(args.output, "bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "bench.md"), "w") as f:
        f.write(tables)
    plot(results, os.path.join(args.output, "benchmarks.png"))
    print(
        f"wrote {args.output}/bench.json, bench.md, benchmarks.png "
        f"({results['total_seconds']:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
