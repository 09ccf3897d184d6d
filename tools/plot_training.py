#!/usr/bin/env python
"""Draw the training curves of a run from its ``metrics.json``: losses against iterations, and
mask / box AP at each evaluation (``TEST.EVAL_PERIOD`` and the final one).

    python tools/plot_training.py output/demo [--output output/demo/training_curves.png]
"""

import argparse
import json
import os
from collections import defaultdict


def read_metrics(path):
    """(losses: name -> [(iteration, value)], evaluations: [(iteration, mask AP, box AP)])."""
    losses, evaluations = defaultdict(list), []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            iteration = record["iteration"] + 1  # Detectron2 counts iterations from 0
            for key, value in record.items():
                if key.startswith("loss_") or key == "total_loss":
                    losses[key].append((iteration, value))
            if "segm/AP" in record:
                evaluations.append((iteration - 1, record["segm/AP"], record.get("bbox/AP")))
    return losses, evaluations


def plot(losses, evaluations, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sorted(losses.items()):
        left.plot(*zip(*points), label=name)
    left.set_xlabel("iteration")
    left.set_ylabel("loss (median of 20 iterations)")
    left.legend()
    left.grid(alpha=0.3)
    if evaluations:
        iterations, mask_ap, box_ap = zip(*evaluations)
        right.plot(iterations, mask_ap, marker="o", label="mask AP")
        right.plot(iterations, box_ap, marker="s", label="box AP (mask boxes)")
        for x, y in zip(iterations, mask_ap):
            right.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6))
        right.legend()
    else:
        right.text(0.5, 0.5, "no evaluation in metrics.json", ha="center", va="center")
    right.set_xlabel("iteration")
    right.set_ylabel("AP")
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run's OUTPUT_DIR (holds metrics.json)")
    parser.add_argument("--output", help="PNG to write (default: RUN/training_curves.png)")
    args = parser.parse_args(argv)
    metrics = os.path.join(args.run, "metrics.json")
    if not os.path.isfile(metrics):
        raise SystemExit(f"{metrics} does not exist: is {args.run!r} a training OUTPUT_DIR?")
    output = args.output or os.path.join(args.run, "training_curves.png")
    losses, evaluations = read_metrics(metrics)
    plot(losses, evaluations, output, f"training of {args.run}")
    print(f"training curves: {output}")


if __name__ == "__main__":
    main()
