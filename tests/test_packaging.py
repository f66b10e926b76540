"""The wheel: it carries the tasks, the demo model and head and the heads registry, and once installed (not
editable; in a virtualenv or not) ``lm-eval-swift demo`` runs from any directory and its metadata declares lm-eval's
plug-in entry points."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lm_eval_swift.swift.heads import SwiftHead


REPO = Path(__file__).resolve().parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out"
)


def run_ok(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing its output; if it fails, fail the test with the command and its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with status {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
    )
    return proc


def outer_site_dirs() -> list[str]:
    """The running interpreter's site-packages folders: a virtualenv's own (and its base interpreter's, when it
    was made with --system-site-packages), else the interpreter's; and the user's, when Python reads it."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return dirs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, tiny_llama) -> Path:
    """A wheel built from a copy of the source tree with one extra head in ``heads/`` (the registry)."""
    from transformers import AutoConfig

    src = tmp_path_factory.mktemp("src") / "lm-eval-swift"
    shutil.copytree(REPO, src, ignore=SOURCE_IGNORE)
    SwiftHead.for_model(
        AutoConfig.from_pretrained(tiny_llama), str(tiny_llama)
    ).save_pretrained(src / "heads" / "tiny-head")
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        str(src),
        "-w",
        str(out),
    ]
    run_ok(cmd, timeout=300)
    (path,) = out.glob("lm_eval_swift-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    demo = "lm_eval_swift/demo/"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert f"{demo}swift-demo-llama/{name}" in names
    assert {
        f"{demo}swift-demo-llama-head/config.json",
        f"{demo}swift-demo-llama-head/head.safetensors",
    } <= names
    registry = "lm_eval_swift/head_registry/"
    assert {
        f"{registry}tiny-head/config.json",
        f"{registry}tiny-head/head.safetensors",
    } <= names
    assert f"{registry}README.md" in names
    assert {
        "lm_eval_swift/task_configs/demo_bon_swift.yaml",
        "lm_eval_swift/task_configs/_bon_template_yaml",
    } <= names
    assert not any(n.startswith(("tests/", "heads/", "tasks/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(a virtualenv with the wheel installed, the environment to run it in). The venv sees the packages of the
    running interpreter (torch, lm-eval, ...) through a .pth file naming its site-packages folders: what
    ``--system-site-packages`` gives outside a virtualenv, and inside one too, where that option would expose the
    base interpreter's packages instead of the virtualenv's."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    run_ok([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    purelib = run_ok(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    (Path(purelib) / "outer_site_packages.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in outer_site_dirs())
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --ignore-installed: install into the venv even though a development install is visible through it
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    run_ok(
        [*pip, "--no-deps", "--ignore-installed", "-q", str(wheel)],
        timeout=300,
        env=env,
    )
    return venv, env


def test_installed_wheel_runs_the_demo_from_any_directory(installed, tmp_path):
    venv, env = installed
    python, script = venv / "bin" / "python", venv / "bin" / "lm-eval-swift"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = run_ok(
        [
            str(python),
            "-c",
            "import lm_eval_swift.swift.heads as h; print(h.__file__); print(sorted(h.available_heads()))",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.splitlines()
    assert where[0].startswith(str(venv)) and "tiny-head" in where[1]

    proc = subprocess.run(
        [
            str(script),
            "demo",
            "--questions",
            "2",
            "--n",
            "2",
            "--threads",
            "1",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "### SWIFT demo: 2 questions, N=2" in proc.stdout
        and "| swift_vote |" in proc.stdout
    )
    assert str(venv) in proc.stdout  # the command it ran names the installed demo model


ENTRY_POINTS = """
import importlib.metadata, json, pathlib
from lm_eval.api.registry import get_filter, get_model
out = {}
for ep in importlib.metadata.distribution("lm-eval-swift").entry_points:
    if ep.group.startswith("lm_eval."):
        obj = ep.load()
        if ep.group == "lm_eval.tasks":
            value = sorted(p.name for p in pathlib.Path(*obj.__path__).glob("*.yaml"))
            value = [str(pathlib.Path(*obj.__path__)), value]
        else:
            value = (get_model if ep.group == "lm_eval.models" else get_filter)(ep.name) is obj
        out.setdefault(ep.group, {})[ep.name] = value
print(json.dumps(out))
"""


def test_installed_metadata_declares_lm_evals_plugin_groups(installed, tmp_path):
    """The entry points of lm-eval's plug-in groups, read from the installed distribution's metadata: each loads,
    the model and filters are the objects lm-eval's registry holds under those names, and the task package's
    folder holds our tasks and is what ``lm-eval-swift tasks-dir`` prints."""
    venv, env = installed
    got = json.loads(
        run_ok(
            [str(venv / "bin" / "python"), "-c", ENTRY_POINTS], cwd=tmp_path, env=env
        ).stdout
    )
    assert got["lm_eval.models"] == {"hf-swift": True}
    assert set(got["lm_eval.filters"]) == {
        "bon_first", "bon_mean", "bon_majority", "bon_oracle", "argmax_score", "swift", "weighted_vote",
        "combined_score",
    } and all(got["lm_eval.filters"].values())  # fmt: skip
    ((folder, yaml),) = got["lm_eval.tasks"].values()
    assert folder.startswith(str(venv)) and {
        "gsm8k_bon_swift.yaml",
        "math_bon_swift.yaml",
        "gsm8k_train_rollouts.yaml",
    } <= set(yaml)
    printed = run_ok(
        [str(venv / "bin" / "lm-eval-swift"), "tasks-dir"], cwd=tmp_path, env=env
    )
    assert printed.stdout.strip() == folder
