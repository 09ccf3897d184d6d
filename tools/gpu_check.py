#!/usr/bin/env python
"""The CUDA checks of solo_d2 in one call, for a machine with a GPU (``make gpu-check``).

    python tools/gpu_check.py [--output output/gpu-check] [--skip-bench]

1. the CUDA cases of the device-aware tests (``pytest -m cuda``: targets, losses, inference,
   training steps in float32 / bfloat16 / float16, export of a CUDA model, 2-process NCCL
   training when 2 GPUs exist), with a JUnit report;
2. ``tools/benchmark.py --device cuda``: target builder vs the dense baseline, training steps
   and inference vs Mask R-CNN (R50-FPN), and float32 vs mixed-precision training steps
   (sections ``targets train infer amp``, 2 repeats, no memory subprocesses).

Writes ``OUTPUT/summary.md`` (the GPU, the test counts, the benchmark tables), ``OUTPUT/
tests.xml``, ``OUTPUT/tests.log`` and ``OUTPUT/bench/``. Sized for under 8 minutes on one GPU.
Without CUDA it says so and exits with status 2, running nothing.
"""

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_SECTIONS = ["targets", "train", "infer", "amp"]


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="output/gpu-check")
    parser.add_argument("--skip-bench", action="store_true", help="run the tests only")
    return parser


def gpu_description():
    """'<name> x N (CUDA <version>, torch <version>)', or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return (
        f"{', '.join(names)} x {torch.cuda.device_count()} "
        f"(CUDA {torch.version.cuda}, torch {torch.__version__})"
    )


def test_counts(junit_path):
    """{"tests", "failures", "errors", "skipped"} of a pytest JUnit file."""
    suite = ET.parse(junit_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def run(command, log_path):
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - start


def main(argv=None):
    args = get_parser().parse_args(argv)
    gpu = gpu_description()
    if gpu is None:
        print(
            "gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False): "
            "nothing checked; run it on a machine with a GPU",
            file=sys.stderr,
        )
        return 2
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    junit = os.path.join(output, "tests.xml")
    code, test_seconds = run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-rs", f"--junitxml={junit}", "tests"],
        os.path.join(output, "tests.log"),
    )
    counts = test_counts(junit)
    lines = [
        "# solo_d2 GPU check",
        "",
        f"* device: {gpu}",
        f"* tests (`pytest -m cuda`): {counts['tests']} run, {counts['failures']} failed, "
        f"{counts['errors']} errors, {counts['skipped']} skipped, {test_seconds:.0f} s",
    ]
    bench_code = 0
    if not args.skip_bench:
        bench = os.path.join(output, "bench")
        bench_code, bench_seconds = run(
            [sys.executable, "tools/benchmark.py", "--device", "cuda", "--sections"]
            + BENCH_SECTIONS
            + ["--repeats", "2", "--no-memory", "--output", bench],
            os.path.join(output, "bench.log"),
        )
        lines.append(
            f"* benchmark (`{' '.join(BENCH_SECTIONS)}`): exit {bench_code}, {bench_seconds:.0f} s"
        )
        tables = os.path.join(bench, "bench.md")
        if os.path.isfile(tables):
            lines += ["", open(tables).read()]
    with open(os.path.join(output, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    print(f"wrote {output}/summary.md")
    return 1 if code or bench_code else 0


if __name__ == "__main__":
    sys.exit(main())
