"""A regular (non-editable) install of solo_d2 works away from the repository."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

IGNORED = {".git", ".venv", "datasets", "output", "tests", "build", "__pycache__"}
TRAIN_SCRIPT = textwrap.dedent("""
    import os, sys
    import solo_d2
    assert solo_d2.__file__.startswith(sys.argv[1]), solo_d2.__file__
    from detectron2.config import get_cfg
    from solo_d2.engine import Trainer

    cfg = get_cfg()
    solo_d2.add_solo_config(cfg)
    cfg.merge_from_file(sys.argv[2])
    cfg.merge_from_list(["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                         "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
                         "OUTPUT_DIR", "out"])
    trainer = Trainer(cfg)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER and os.path.isfile("out/model_final.pth")
    assert os.path.isfile("datasets/shapes/annotations/instances_train.json")
    print("trained from", solo_d2.__file__)
    """)


@pytest.mark.slow
def test_non_editable_install_imports_and_trains_on_shapes_from_another_directory(tmp_path):
    source = tmp_path / "source"  # the build writes next to its sources: not in the checkout
    shutil.copytree(REPO, source, ignore=lambda d, names: {n for n in names if n in IGNORED})
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(source)],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert (site / "solo_d2" / "checkpoint" / "convert.py").is_file()
    # the benchmark is a package of the repository only (benchmarks/), never installed
    assert not (site / "solo_d2" / "benchmark").exists() and not (site / "benchmarks").exists()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATASETS")}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the development venv
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(site)]
        + [os.path.join(REPO, "configs", "SOLO_shapes_quick.yaml")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"trained from {site}" in proc.stdout
