"""tools/setup_env.py: idempotence, respect for an existing detectron2, the sdist patch."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("setup_env", REPO / "tools" / "setup_env.py")
setup_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_env)


@pytest.mark.skipif(
    not (Path(sys.prefix) / setup_env.STAMP_NAME).exists(),
    reason="tests do not run in a venv made by tools/setup_env.py",
)
def test_second_setup_run_is_a_no_op():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "setup_env.py"), "--venv", sys.prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
    )
    assert "keeping it" in proc.stdout  # torch and detectron2 found, not reinstalled
    assert "solo_d2: installed and up to date" in proc.stdout
    assert proc.stdout.rstrip().endswith("ready: nothing to do")


def fake_packages(tmp_path, monkeypatch, *names):
    """Put importable fake top-level packages on PYTHONPATH (seen by child interpreters)."""
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("__version__ = 'user-build'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_existing_detectron2_is_kept(tmp_path, monkeypatch, capsys):
    fake_packages(tmp_path, monkeypatch, "detectron2")
    commands = []
    monkeypatch.setattr(setup_env, "run", lambda step, cmd, **kw: commands.append(cmd) or "")
    assert setup_env.step_detectron2(sys.executable) is False
    assert commands == []  # nothing downloaded or installed
    assert "keeping it" in capsys.readouterr().out


def test_missing_detectron2_is_installed_from_the_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")
    python = tmp_path / "python"  # an interpreter that finds nothing
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    commands = []

    def fake_run(step, cmd, **kwargs):
        commands.append([str(c) for c in cmd])
        raise setup_env.SetupError(f"step '{step}' stopped by the test")

    monkeypatch.setattr(setup_env, "run", fake_run)
    with pytest.raises(setup_env.SetupError, match="detectron2 \\(download sdist\\)"):
        setup_env.step_detectron2(python)
    assert commands[0][-1] == "pb1-detectron2==0.6" and "download" in commands[0]


def test_venv_inherits_a_detectron2_of_the_base_interpreter(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    fake_packages(site, monkeypatch, "detectron2")
    commands = []
    monkeypatch.setattr(setup_env, "run", lambda step, cmd, **kw: commands.append(cmd) or "")
    setup_env.step_venv(tmp_path / "venv", sys.executable)
    assert commands and "--system-site-packages" in [str(c) for c in commands[0]]


def test_sdist_setup_patch(tmp_path):
    src = tmp_path / "pb1-detectron2-0.6"
    (src / "detectron2" / "model_zoo" / "configs" / "COCO").mkdir(parents=True)
    (src / "detectron2" / "model_zoo" / "configs" / "COCO" / "a.yaml").write_text("x: 1\n")
    (src / "setup.py").write_text(
        'setup(\n    name="pb1-detectron2",\n    install_requires=[\n        "black==21.4b2",\n'
        '        "yacs",\n    ],\n    ext_modules=get_extensions(),\n)\n'
    )
    setup_env._patch_detectron2_setup(src)
    text = (src / "setup.py").read_text()
    assert 'name="detectron2"' in text and "ext_modules=[]" in text
    assert "install_requires=[]," in text and "black" not in text
    assert (src / "configs" / "COCO" / "a.yaml").read_text() == "x: 1\n"
    assert not (src / "detectron2" / "model_zoo" / "configs").exists()


def test_unexpected_sdist_is_a_clear_error(tmp_path):
    (tmp_path / "setup.py").write_text("setup(name='something-else')\n")
    with pytest.raises(setup_env.SetupError, match="unexpected setup.py"):
        setup_env._patch_detectron2_setup(tmp_path)


def test_failed_step_names_step_command_and_output():
    with pytest.raises(setup_env.SetupError) as info:
        setup_env.run("demo step", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    message = str(info.value)
    assert "step 'demo step' failed (exit code 3)" in message and "boom" in message


def test_uv_gets_pips_index_configuration(tmp_path):
    python = tmp_path / "python"  # answers `python -m pip config list` like pip does
    python.write_text(
        "#!/bin/sh\ncat <<'EOF'\n"
        "global.extra-index-url='file:///a/simple file:///b/simple'\n"
        "global.find-links='/wheels'\n"
        "global.constraint='/etc/pip/constraints.txt'\n"
        "global.index-url='https://mirror.example/simple'\n"
        ":env:.find-links='/env-wheels'\n"
        "EOF\n"
    )
    python.chmod(0o755)
    options = setup_env.pip_config_options(python)
    pairs = list(zip(options[::2], options[1::2]))
    assert ("--index-strategy", "unsafe-best-match") in pairs
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == [
        "file:///a/simple",
        "file:///b/simple",
    ]
    assert [v for k, v in pairs if k == "--find-links"] == ["/env-wheels"]  # PIP_* wins
    assert ("--constraint", "/etc/pip/constraints.txt") in pairs


def test_a_failing_uv_falls_back_to_pip(tmp_path, monkeypatch):
    python = str(tmp_path / "bin" / "python")
    monkeypatch.setitem(setup_env._UV, python, tmp_path / "bin" / "uv")
    monkeypatch.setattr(setup_env, "pip_config_options", lambda python: [])
    commands = []

    def fake_run(step, cmd, **kwargs):
        commands.append([str(c) for c in cmd])
        if commands[-1][0].endswith("/uv"):
            raise setup_env.SetupError(f"step '{step}' failed: no network")
        return "installed"

    monkeypatch.setattr(setup_env, "run", fake_run)
    assert setup_env.pip_install("torch", python, ["torch==2.14.1"]) == "installed"
    assert commands[0][:3] == [str(tmp_path / "bin" / "uv"), "pip", "install"]
    assert (
        commands[1][:4] == [python, "-m", "pip", "install"] and commands[1][-1] == "torch==2.14.1"
    )
    monkeypatch.setenv(setup_env.INSTALLER_ENV, "pip")  # pip only: uv is never tried
    commands.clear()
    setup_env.pip_install("torch", python, ["torch==2.14.1"])
    assert len(commands) == 1 and commands[0][:3] == [python, "-m", "pip"]


def test_a_venv_that_inherits_system_packages_installs_with_pip(tmp_path, monkeypatch):
    """uv ignores inherited packages: it would put a second torch over the user's CUDA build."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\n")
    python = str(tmp_path / "bin" / "python")
    assert setup_env.inherits_system_packages(python)
    commands = []
    monkeypatch.setattr(setup_env, "run", lambda step, cmd, **kw: commands.append(cmd) or "")
    setup_env.pip_install("solo_d2", python, ["-e", "."])
    assert [c[:3] for c in commands] == [[python, "-m", "pip"]]  # no uv install, no uv call
    (tmp_path / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    assert not setup_env.inherits_system_packages(python)
