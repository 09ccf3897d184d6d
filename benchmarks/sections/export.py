"""Section ``export``: the exported ONNX graph in ONNX Runtime (CPU) vs PyTorch eager.

For SOLO and SOLOv2 R50 (those of ``--models``) at ``settings.infer_size``, batch 1, with the
inference load of the ``infer`` section (:func:`~benchmarks.cases.add_inference_load`):
the model is exported with :func:`solo_d2.export.export_onnx` (post-processing in the graph),
its detections are checked against eager PyTorch's, then both are timed in turns in this
process with the same number of threads (``--threads``; ONNX Runtime: ``intra_op_num_threads``,
one inter-op thread). Eager is ``model([{"image", "height", "width"}])``, the graph gets the same
image as Float[3, H, W]; both return masks at H x W. One more, profiled ONNX Runtime run gives
the op types that take the time. Always on the CPU; only with ``--sections export``.

Rows: ``model``, ``eager_ms`` / ``onnx_ms`` (medians) and their ``times``, ``ratio`` (ONNX
Runtime / eager), ``instances``, ``match`` (:func:`~solo_d2.export.verify.match_detections`),
``load``, ``export_s``, ``onnx_file_mb``, ``onnx_profile`` (ms per op type, largest first) and
``eager_peak_mb`` / ``onnx_peak_mb`` (fresh processes: the eager model, in a process with torch,
Detectron2 and solo_d2; or the ONNX file in an ONNX Runtime session, in a process as a deployment
runs it, without torch: :func:`onnx_peak_mb`).
"""

import gc
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List

import numpy as np

from ..cases import add_inference_load, infer_step, prepare_infer
from ..measure import LAUNCHER, MemoryPlan, alternate
from ..registry import MemoryCase, register_memory_case, register_section
from ..report import fmt, markdown_table
from ..settings import LABELS, REPO, Settings

#: Models of this section, when in ``--models``.
EXPORT_MODELS = ("SOLO", "SOLOv2")
#: The issue's target: ONNX Runtime latency <= 0.8 x eager.
TARGET_RATIO = 0.8


def onnx_session(path: str, threads: int, profile_prefix: str = None):
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (and a profiler), with the
    options :class:`~solo_d2.export.OnnxPredictor` uses."""
    from solo_d2.export.predictor import _import_onnxruntime, default_session_options

    ort = _import_onnxruntime()
    options = default_session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def profile_by_op_type(session, feed: Dict, top: int = 8) -> Dict[str, float]:
    """One profiled run: total ms per ONNX op type, the ``top`` largest (ONNX Runtime's
    profiler; the JSON trace is removed)."""
    session.run(None, feed)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    totals = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0) / 1000
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {name: round(ms, 1) for name, ms in ordered}


def _eager_outputs(result: Dict):
    instances = result["instances"]
    return [instances.pred_masks, instances.scores, instances.pred_classes, instances.pred_boxes]


def export_table(results: Dict) -> str:
    size = "x".join(map(str, results["settings"]["infer_size"]))
    threads = results["machine"].get("threads")
    rows = results["export"]
    body = markdown_table(
        [
            "model",
            "PyTorch eager ms",
            "ONNX Runtime ms",
            "ONNX Runtime / eager",
            "instances (matched)",
            "eager peak MB",
            "ONNX Runtime peak MB",
        ],
        [
            [
                LABELS.get(r["model"], r["model"]),
                fmt(r["eager_ms"], ".0f"),
                fmt(r["onnx_ms"], ".0f"),
                f"{fmt(r['ratio'], '.2f')} ({'PASS' if r['ratio'] <= TARGET_RATIO else 'MISS'})",
                f"{r['instances']} ({r['match']['matched']})",
                fmt(r["eager_peak_mb"], ".0f"),
                fmt(r["onnx_peak_mb"], ".0f"),
            ]
            for r in rows
        ],
    )
    profiles = "\n".join(
        f"* {LABELS.get(r['model'], r['model'])}, ONNX Runtime ms by op type: "
        + ", ".join(f"{op} {ms:.0f}" for op, ms in r["onnx_profile"].items())
        for r in rows
    )
    return (
        f"**Exported graph** (batch 1, {size} image, CPU, {threads} threads; target ONNX Runtime "
        f"<= {TARGET_RATIO} x eager)\n\n{body}\n\n{profiles}"
    )


@register_section("export", order=50, table=export_table, default=False)
def bench_export(settings: Settings, memory: MemoryPlan) -> List[Dict]:
    import torch

    from solo_d2.export import export_onnx
    from solo_d2.export.verify import match_detections

    if settings.device != "cpu":
        print(f"  export: ONNX Runtime runs on the CPU; --device {settings.device} ignored")
    folder = os.path.join(getattr(settings, "output", "output/bench"), "export")
    cpu = Settings(**{**settings.__dict__, "device": "cpu"})
    rows = []
    for name in [m for m in EXPORT_MODELS if m in settings.models]:
        model, inputs = prepare_infer(cpu, name)
        load = add_inference_load(model, inputs, settings.candidates)
        image = inputs[0]["image"].to(torch.float32)
        start = time.perf_counter()
        path = export_onnx(model, os.path.join(folder, f"{name}.onnx"), image)
        export_s = time.perf_counter() - start
        session = onnx_session(path, settings.threads)
        feed = {"image": image.numpy()}
        eager = _eager_outputs(infer_step(model, inputs)[0])
        match = match_detections(
            [*eager[:3], eager[3].tensor],
            session.run(None, feed),
            max_detections=model.post_processor.max_per_image,
            score_floor=model.post_processor.update_thresh,
        )
        print(f"  export {name}: {export_s:.0f} s, {load}, match {match}", flush=True)
        times = alternate(
            {
                "eager": lambda m=model: infer_step(m, inputs),
                "onnxruntime": lambda s=session: s.run(None, feed),
            },
            settings.warmup,
            settings.repeats,
            "cpu",
        )
        prefix = os.path.join(folder, f"{name}_profile")
        profile = profile_by_op_type(onnx_session(path, settings.threads, prefix), feed)
        row = {
            "model": name,
            "eager_ms": times["eager"]["ms"],
            "onnx_ms": times["onnxruntime"]["ms"],
            "ratio": times["onnxruntime"]["ms"] / times["eager"]["ms"],
            "times": times,
            "instances": len(eager[1]),
            "match": match,
            "load": load,
            "export_s": round(export_s, 1),
            "onnx_file_mb": round(os.path.getsize(path) / 2**20, 1),
            "onnx_profile": profile,
        }
        memory.request(row, prefix="eager_", kind="export", model=name)
        image_path = os.path.join(folder, f"{name}_image.npy")
        np.save(image_path, feed["image"])
        if settings.memory:
            onnx_memory = onnx_peak_mb(path, image_path, settings.threads)
            row["onnx_base_mb"], row["onnx_peak_mb"] = (
                onnx_memory["base_mb"],
                onnx_memory["peak_mb"],
            )
            print(f"  export {name}: ONNX Runtime alone in a process: {onnx_memory}", flush=True)
        rows.append(row)
        print(
            f"  export {name}: eager {row['eager_ms']:.0f} ms, ONNX Runtime {row['onnx_ms']:.0f}"
            f" ms ({row['ratio']:.2f}x), profile {profile}",
            flush=True,
        )
        del model, session
        gc.collect()
    return rows


@register_memory_case("export")
def export_case(settings: Settings, case: Dict) -> MemoryCase:
    """``{"kind": "export", "model": NAME}``: one eager inference call (load added after the
    base memory is read). The exported graph's memory: :func:`onnx_peak_mb`."""
    cpu = Settings(**{**settings.__dict__, "device": "cpu"})
    model, inputs = prepare_infer(cpu, case["model"])
    load = lambda: add_inference_load(model, inputs, settings.candidates)  # noqa: E731
    return MemoryCase(lambda: infer_step(model, inputs), prepare=load)


# A deployment process: numpy and ONNX Runtime only (importing torch, Detectron2 and solo_d2 alone
# takes ~800 MB of resident memory that a process running the exported graph does not have).
_ONNX_MEMORY_WORKER = """
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[4])  # solo_d2/export: its predictor imports numpy only
from predictor import _import_onnxruntime, default_session_options
ort = _import_onnxruntime()
session = ort.InferenceSession(
    sys.argv[1], default_session_options(int(sys.argv[3])), providers=["CPUExecutionProvider"]
)
image = np.load(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _ in range(2):
    session.run(None, {"image": image})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": round(base, 1), "peak_mb": round(peak, 1),
                  "torch_imported": "torch" in sys.modules}))
"""


def onnx_peak_mb(path: str, image_path: str, threads: int) -> Dict:
    """Peak memory of two runs of the ONNX file on the saved image, in a fresh process that
    imports only numpy, ONNX Runtime and solo_d2's predictor module (no torch)."""
    command = [sys.executable, "-c", _ONNX_MEMORY_WORKER, path, image_path, str(threads)]
    command.append(os.path.join(REPO, "solo_d2", "export"))
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])
