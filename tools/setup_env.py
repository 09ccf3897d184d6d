#!/usr/bin/env python3
"""One-command, idempotent set-up of the solo_d2 development environment.

Creates ``.venv/`` in the repository root and installs, in order:

1. ``venv``        the virtual environment itself;
2. ``torch``       torch==2.14.1 / torchvision==0.29.1 (taken from this machine's disk by pip);
3. ``detectron2``  kept untouched when the interpreter already imports one (e.g. an official
                   build with CUDA ops); otherwise the official v0.6 Python sources from the PyPI
                   sdist ``pb1-detectron2==0.6``, installed as a proper ``detectron2``
                   distribution without its C++ ops (their sources are absent from the sdist);
4. ``solo_d2``     this package (editable) with its runtime, test and export (ONNX)
                   dependencies.

Packages are installed with uv (itself installed into the venv first) when it can be: it
resolves and unpacks in parallel, ~3x faster than pip for torch's 4 GB. It is given pip's
configuration (index URLs, find-links, constraints), and every step falls back to pip when uv
cannot be installed or fails; ``SOLO_D2_INSTALLER=pip`` uses pip only.

A detectron2 importable by the base interpreter is inherited through
``--system-site-packages`` and is never replaced. Each step first checks whether it is already
done, so a second run on a ready venv only performs those checks (a few seconds) and prints
``nothing to do``. A failing step prints its name, the command and pip's output.

Usage: ``python3 tools/setup_env.py [--venv DIR] [--python PYTHON]`` (``make setup`` calls it).
"""

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]
DETECTRON2_SDIST = "pb1-detectron2==0.6"
STAMP_NAME = ".solo_d2-setup-stamp"
INSTALLER_ENV = "SOLO_D2_INSTALLER"  # "pip": never use uv
_UV = {}  # python -> path of its venv's uv, or None


class SetupError(RuntimeError):
    pass


def log(msg):
    print(f"[setup] {msg}", flush=True)


def run(step, cmd, **kwargs):
    """Run ``cmd``; on failure raise a SetupError naming the step, the command and its output."""
    proc = subprocess.run(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-40:])
        command = " ".join(map(str, cmd))
        raise SetupError(
            f"step '{step}' failed (exit code {proc.returncode}) running:\n  {command}\n"
            f"--- last lines of its output ---\n{tail}"
        )
    return proc.stdout


@functools.lru_cache(maxsize=None)
def pip_config_options(python):
    """pip's index configuration (files and ``PIP_*`` variables, as ``pip config list`` prints
    them) as uv options, so that uv installs from the same places as pip would."""
    proc = subprocess.run(
        [str(python), "-m", "pip", "config", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    values = {}
    for line in proc.stdout.splitlines():  # e.g. global.find-links='/opt/wheels'
        match = re.match(r"^[^=]*\.([a-z-]+)='(.*)'$", line.strip())
        if match:
            values[match.group(1)] = match.group(2)  # later scopes (PIP_* variables) win
    options = ("--index-strategy", "unsafe-best-match")  # pip's rule: best version of all
    if "index-url" in values:
        options += ("--index-url", values["index-url"])
    for key in ("extra-index-url", "find-links", "constraint"):
        for value in values.get(key, "").split():
            options += (f"--{key}", value)
    return options


def inherits_system_packages(python):
    """Whether ``python``'s venv sees the base interpreter's packages (``--system-site-packages``
    in its ``pyvenv.cfg``)."""
    cfg = Path(python).parent.parent / "pyvenv.cfg"
    text = cfg.read_text() if cfg.is_file() else ""
    return re.search(r"^include-system-site-packages\s*=\s*true\s*$", text, re.M | re.I) is not None


def _uv(python):
    """The uv of ``python``'s venv, installed there on first use; None if it cannot be, or if
    the venv inherits the base interpreter's packages: uv does not see those, and would install
    a second torch over the user's own (pip keeps them)."""
    if os.environ.get(INSTALLER_ENV, "").lower() == "pip" or inherits_system_packages(python):
        return None
    if python not in _UV:
        uv = Path(python).parent / "uv"
        if not uv.exists():
            try:
                run("uv", [python, "-m", "pip", "install", "--no-compile", "uv"])
            except SetupError as e:
                log(f"uv: not available ({str(e).splitlines()[0]}); installing with pip")
        _UV[python] = uv if uv.exists() else None
    return _UV[python]


def pip_install(step, python, args, cwd=None):
    """``pip install ARGS`` into ``python``'s environment, through uv when it is available."""
    uv = _uv(python)
    if uv is not None:
        env = dict(os.environ)
        if "SSL_CERT_FILE" not in env and os.environ.get("PIP_CERT"):
            env["SSL_CERT_FILE"] = os.environ["PIP_CERT"]
        cmd = [uv, "pip", "install", "--python", python, *pip_config_options(python), *args]
        try:
            return run(step, cmd, cwd=cwd, env=env)
        except SetupError as e:
            log(f"{step}: uv failed, installing with pip instead:\n{e}")
    # --no-compile: byte-compiling the 5 GB of torch takes ~30 s; Python compiles what it imports
    return run(step, [python, "-m", "pip", "install", "--no-compile", *args], cwd=cwd)


def find_module(python, module):
    """Return ``(version, origin)`` if ``python`` can find ``module``, else None.

    Only locates the module (it is not imported: detectron2's import needs its dependencies,
    which step 4 installs); the version comes from the installed distribution when there is one.
    """
    code = (
        "import importlib.util, importlib.metadata as md, sys\n"
        "spec = importlib.util.find_spec(sys.argv[1])\n"
        "if spec is None: sys.exit(1)\n"
        "try: version = md.version(sys.argv[1])\n"
        "except md.PackageNotFoundError: version = 'unknown'\n"
        "print(version); print(spec.origin)"
    )
    proc = subprocess.run(
        [str(python), "-c", code, module],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if proc.returncode != 0:
        return None
    version, origin = proc.stdout.strip().splitlines()[-2:]
    return version, origin


def step_venv(venv, base_python):
    python = venv / "bin" / "python"
    if python.exists():
        log(f"venv: {venv} exists")
        return python, False
    inherit = find_module(base_python, "detectron2") is not None
    cmd = [base_python, "-m", "venv", venv]
    if inherit:
        # Make the user's own detectron2 (and the torch it was built against) visible in the venv.
        cmd.insert(3, "--system-site-packages")
        log("venv: the base interpreter already imports detectron2; the venv will inherit it")
    log(f"venv: creating {venv}")
    run("venv", cmd)
    return python, True


def step_torch(python):
    found = find_module(python, "torch")
    if found and find_module(python, "torchvision"):
        log(f"torch: found torch {found[0]}, keeping it")
        return False
    log(f"torch: installing {' '.join(TORCH_REQUIREMENTS)}")
    pip_install("torch", python, TORCH_REQUIREMENTS)
    return True


def _patch_detectron2_setup(src):
    """Make the v0.6 sdist buildable as a pure-Python ``detectron2`` distribution.

    Only ``setup.py`` changes (the ``detectron2`` sources stay byte for byte): the distribution
    name, no C++ extension (``detectron2/layers/csrc`` is not in the sdist) and no install
    requirements (solo_d2's ``setup.cfg`` lists the runtime dependencies that are really used,
    without the formatter pins of the original list). Model-zoo configs are copied to the
    top-level ``configs/`` that its ``setup.py`` packages them from.
    """
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    replacements = [
        (r'name="pb1-detectron2"', 'name="detectron2"'),
        (r"ext_modules=get_extensions\(\)", "ext_modules=[]"),
        (r"install_requires=\[.*?\n    \],", "install_requires=[],"),
    ]
    for pattern, new in replacements:
        text, count = re.subn(pattern, new, text, count=1, flags=re.S)
        if count != 1:
            raise SetupError(
                f"step 'detectron2': unexpected setup.py in the sdist ({pattern!r} not found)"
            )
    setup_py.write_text(text)
    zoo_configs = src / "detectron2" / "model_zoo" / "configs"
    if not (src / "configs").exists():
        shutil.copytree(zoo_configs, src / "configs")
    shutil.rmtree(zoo_configs)  # setup.py links it back to the top-level configs/


def step_detectron2(python):
    found = find_module(python, "detectron2")
    if found:
        log(f"detectron2: found detectron2 {found[0]} at {Path(found[1]).parent}, keeping it")
        return False
    log(f"detectron2: installing the official v0.6 sources from the PyPI sdist {DETECTRON2_SDIST}")
    with tempfile.TemporaryDirectory(prefix="solo_d2-detectron2-") as tmp:
        tmp = Path(tmp)
        # --no-build-isolation: the sdist's setup.py imports torch, which is in the venv already.
        run(
            "detectron2 (download sdist)",
            [
                python,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "-d",
                tmp,
                DETECTRON2_SDIST,
            ],
        )
        archives = sorted(tmp.glob("*.tar.gz"))
        if len(archives) != 1:
            raise SetupError(f"step 'detectron2': expected one sdist in {tmp}, found {archives}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        src = next(p for p in tmp.iterdir() if p.is_dir() and (p / "setup.py").exists())
        _patch_detectron2_setup(src)
        pip_install(
            "detectron2 (build and install)",
            python,
            ["--no-build-isolation", "--no-deps", f"detectron2 @ {src.as_uri()}"],
            cwd=src,
        )
    found = find_module(python, "detectron2")
    if not found:
        raise SetupError("step 'detectron2': installed, but `import detectron2` still fails")
    log(f"detectron2: installed detectron2 {found[0]}")
    return True


def _inputs_digest():
    """Digest of the files that decide what step 4 installs."""
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml", "tools/setup_env.py"):
        digest.update((REPO / name).read_bytes())
    return digest.hexdigest()


def step_solo_d2(python, venv, force):
    stamp = venv / STAMP_NAME
    digest = _inputs_digest()
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        if find_module(python, "solo_d2"):
            log("solo_d2: installed and up to date")
            return False
    log("solo_d2: installing runtime + test dependencies and solo_d2 (editable)")
    # setuptools<81 is needed before the editable build (it provides pkg_resources too).
    pip_install("solo_d2 (build tools)", python, ["setuptools>=61,<81", "wheel"])
    pip_install(
        "solo_d2 (editable install)",
        python,
        ["--no-build-isolation", "-e", ".[test,export]"],
        cwd=REPO,
    )
    stamp.write_text(digest + "\n")
    return True


def step_verify(python):
    out = run(
        "verify",
        [
            python,
            "-c",
            "import detectron2, solo_d2; print(detectron2.__version__, solo_d2.HAS_D2_CPP_OPS)",
        ],
    )
    version, has_ops = out.strip().splitlines()[-1].split()
    log(f"verify: `import solo_d2, detectron2` works (detectron2 {version}, C++ ops: {has_ops})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.environ.get("SOLO_D2_VENV", REPO / ".venv"), type=Path)
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that creates the venv"
    )
    args = parser.parse_args()
    venv = args.venv.resolve()
    start = time.monotonic()
    try:
        python, created = step_venv(venv, args.python)
        changed = [created, step_torch(python), step_detectron2(python)]
        changed.append(step_solo_d2(python, venv, force=any(changed)))
        step_verify(python)
    except SetupError as e:
        print(f"[setup] FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    elapsed = f"{time.monotonic() - start:.0f} s"
    log("ready: nothing to do" if not any(changed) else f"ready: {python} (set-up took {elapsed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
