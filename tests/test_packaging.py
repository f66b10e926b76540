"""The wheel: it carries the tasks, the demo model and head and the heads registry, and once installed (not
editable) ``lm-eval-swift demo`` runs from any directory."""

from __future__ import annotations

import os
import shutil
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
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
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


def test_installed_wheel_runs_the_demo_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "venv",
            "--system-site-packages",
            "--without-pip",
            str(venv),
        ],
        check=True,
    )
    python, script = venv / "bin" / "python", venv / "bin" / "lm-eval-swift"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --ignore-installed: install into the venv even though a development install is visible through it
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--ignore-installed",
        "-q",
    ]
    subprocess.run(
        [*pip, str(wheel)], check=True, capture_output=True, timeout=300, env=env
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import lm_eval_swift.swift.heads as h; print(h.__file__); print(sorted(h.available_heads()))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
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
