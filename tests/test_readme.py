"""Every command of the README's ``bash`` blocks runs as written, in order, on a tiny model and local data.

What the test changes, and nothing else: the model (``meta-llama/Llama-3.1-8B-Instruct``, ``MODEL``) becomes a tiny
random model; evaluations get size flags (``--limit``, ``--gen_kwargs max_gen_toks=``, N through ``--metadata``)
and ``train`` ``--epochs``; the data come from ``LM_EVAL_SWIFT_DATA_DIR`` (as the README says); without a GPU,
``parallelize=True`` (which needs GPUs) is dropped. ``sh`` blocks are shown, not run (vLLM sampling: no vLLM or GPU here). Not run here: ``pip install`` lines (the demo they end with is
``test_demo.py`` and ``test_packaging.py``) and ``accelerate launch`` (``test_data_parallel.py``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "MODEL")
SKIPPED = ("pip ", "accelerate launch ")
EVALS = ("lm_eval ", "lm-eval-swift eval ")
SIZE = [
    "--limit",
    "2",
    "--gen_kwargs",
    "max_gen_toks=8",
    "--metadata",
    json.dumps({"n": 4}),
]


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks, in order: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def as_run_here(command: str, model: Path) -> str:
    for name in MODELS:
        command = re.sub(
            rf"(?<=[=\s]){re.escape(name)}(?=[,\s]|$)", str(model), command
        )
    if not torch.cuda.is_available():
        command = command.replace(",parallelize=True", "")
    if command.startswith(EVALS):
        command += " " + " ".join(map(shlex.quote, SIZE))
    if command.startswith("lm-eval-swift train "):
        command += " --epochs 1"
    return command


def test_readme_commands_run_as_written(tiny_llama, shared_data, tmp_path):
    commands = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    run = [c for c in commands if not c.startswith(SKIPPED)]
    assert len(run) >= 9 and any(
        "--batch_size 64" in c for c in run
    )  # the One GPU example among them
    env = {
        **os.environ,
        "LM_EVAL_SWIFT_DATA_DIR": str(shared_data),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for command in run:
        line = as_run_here(command, tiny_llama)
        proc = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    assert (tmp_path / "heads" / "my-model" / "head.safetensors").is_file()
    assert (tmp_path / "board.csv").is_file() and (tmp_path / "curve.png").is_file()
    assert (
        len(list(tmp_path.glob("results/*/rollouts_math_bon_swift_*.jsonl"))) == 3
    )  # hf, hf-swift, One GPU
