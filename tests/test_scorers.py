"""Reward-model scorers vs. independent re-implementations of each author's scoring code.

Every checkpoint is a tiny random model saved in the real layout (parameter names, head names,
file format: sharded safetensors / sharded .bin / the Starling single state-dict file) with a
Llama-like tokenizer (adds BOS) and, where needed, a Llama-3-like chat template.  Weights use a
large init so rewards and "+"/"-" probabilities vary a lot between inputs: reading the wrong
position could not go unnoticed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers.processors import TemplateProcessing
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    MistralConfig,
    MistralForSequenceClassification,
    MistralModel,
)

from lm_eval_swift.bon.rollouts import (
    QuestionRollout,
    Response,
    read_rollouts,
    write_rollouts,
)
from lm_eval_swift.scorers import (
    PAPER_INSTRUCTION,
    SCORERS,
    Scorer,
    UnknownScorerError,
    WeightLoadError,
    aggregate,
    get_scorer,
    register_scorer,
)
from lm_eval_swift.scores import parse_scorer_specs
from lm_eval_swift.toy_models import char_tokenizer


QUESTIONS = ["What is 2+3?", "Compute 7*6 - 4, then halve it.", "Is 9 prime?"]
RESPONSES = [
    "Step 1: 2+3 = 5.\n\nStep 2: The answer is 5.",
    "7*6 = 42\n\n42 - 4 = 38\n\n38 / 2 = 19\n\nSo the result is 19, done.",
    "No: 9 = 3*3.",
]
TOL = 1e-3
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=0.5,
)
LLAMA3_TEMPLATE = (
    "{% for m in messages %}{% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- builders
def _tokenizer(*, llama3: bool = False, extra: tuple[str, ...] = ()):
    """Char tokenizer that, like Llama/Mistral tokenizers, prepends BOS by default."""
    tok = char_tokenizer()
    if llama3:
        tok.add_special_tokens(
            {
                "additional_special_tokens": [
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eot_id|>",
                ]
            }
        )
        tok.chat_template = LLAMA3_TEMPLATE
    if extra:
        tok.add_tokens(list(extra))
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    return tok


def _cfg(cls, tok, **kw):
    return cls(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **TINY,
        **kw,
    )


def _head(hidden: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(hidden, 1, bias=False)
    nn.init.normal_(head.weight, std=1.0)
    return head


def _save_sharded(state: dict, d: Path, fmt: str) -> None:
    """Two shards + index, as ``save_pretrained`` writes for big checkpoints."""
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    ext, index = (
        ("safetensors", "model.safetensors.index.json")
        if fmt == "safetensors"
        else ("bin", "pytorch_model.bin.index.json")
    )
    prefix = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, part in enumerate(halves, 1):
        name = f"{prefix}-0000{i}-of-00002.{ext}"
        tensors = {k: state[k].contiguous() for k in part}
        if fmt == "safetensors":
            save_file(tensors, str(d / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, d / name)
        weight_map.update(dict.fromkeys(part, name))
    (d / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


class Ckpt:
    def __init__(self, path: Path, tok, **refs):
        self.path, self.tok = path, tok
        self.__dict__.update(refs)


def _value_head_ckpt(
    d: Path, backbone_cls, cfg_cls, arch: str, fmt: str, seed: int
) -> Ckpt:
    tok = _tokenizer()
    cfg = _cfg(cfg_cls, tok)
    torch.manual_seed(seed)
    backbone = backbone_cls(cfg).eval()
    head = _head(cfg.hidden_size, seed + 1)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["regression_head.weight"] = head.weight.detach().clone()
    _save_sharded(state, d, fmt)
    config = cfg.to_dict() | {
        "architectures": [arch],
        "auto_map": {"AutoModel": f"modeling.{arch}"},
    }
    (d / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(d)
    return Ckpt(d, tok, backbone=backbone, head=head)


class GPTRewardModel(nn.Module):
    """The Starling-RM model card's class (backbone registered twice, LM head kept), its PAD_ID included."""

    def __init__(self, lm: LlamaForCausalLM, tokenizer):
        super().__init__()
        self.model = lm
        self.transformer = lm.model
        self.v_head = _head(lm.config.hidden_size, 7)
        tokenizer.pad_token = tokenizer.unk_token
        self.PAD_ID = tokenizer(tokenizer.pad_token)["input_ids"][
            0
        ]  # the BOS added before <unk>

    def forward(self, input_ids, attention_mask):
        hidden = self.transformer(input_ids, attention_mask=attention_mask)[0]
        rewards = self.v_head(hidden).squeeze(-1)
        scores = []
        for i in range(input_ids.shape[0]):
            c_inds = (input_ids[i] == self.PAD_ID).nonzero()
            c_ind = c_inds[0].item() if len(c_inds) > 0 else input_ids.shape[1]
            scores.append(rewards[i, c_ind - 1])
        return scores


def _causal_lm_ckpt(d: Path, tok, cfg_cls, seed: int) -> Ckpt:
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(_cfg(cfg_cls, tok)).eval()
    lm.save_pretrained(d)
    tok.save_pretrained(d)
    return Ckpt(d, tok, lm=lm)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    out = {}
    for name in (
        "eurus",
        "ultrarm",
        "starling",
        "starling-base",
        "skywork",
        "seq-cls",
        "rlhflow",
        "shepherd",
    ):
        (root / name).mkdir()
    out["eurus"] = _value_head_ckpt(
        root / "eurus",
        MistralModel,
        MistralConfig,
        "EurusRewardModel",
        "safetensors",
        1,
    )
    out["ultrarm"] = _value_head_ckpt(
        root / "ultrarm", LlamaModel, LlamaConfig, "LlamaRewardModel", "bin", 2
    )

    # Starling: a "Llama-2-7b-chat" dir (config + tokenizer) and the RM dir with one state-dict file.
    tok = _tokenizer()
    torch.manual_seed(3)
    lm = LlamaForCausalLM(_cfg(LlamaConfig, tok)).eval()
    lm.config.save_pretrained(root / "starling-base")
    tok.save_pretrained(root / "starling-base")
    rm = GPTRewardModel(lm, tok).eval()
    torch.save(rm.state_dict(), root / "starling" / "pytorch_model.bin")
    out["starling"] = Ckpt(root / "starling", tok, rm=rm, base=root / "starling-base")

    # Skywork: LlamaForSequenceClassification, 1 label, Llama-3-like template, own pad token.
    tok = _tokenizer(llama3=True)
    torch.manual_seed(4)
    sk = LlamaForSequenceClassification(_cfg(LlamaConfig, tok, num_labels=1)).eval()
    sk.save_pretrained(root / "skywork")
    tok.save_pretrained(root / "skywork")
    out["skywork"] = Ckpt(root / "skywork", tok, rm=sk)

    # generic seq-cls whose pad id is the EOS ending every turn: transformers pools before it.
    tok = _tokenizer()
    torch.manual_seed(5)
    cfg = _cfg(MistralConfig, tok, num_labels=1)
    cfg.pad_token_id = tok.eos_token_id
    sc = MistralForSequenceClassification(cfg).eval()
    sc.save_pretrained(root / "seq-cls")
    tok.save_pretrained(root / "seq-cls")
    out["seq-cls"] = Ckpt(root / "seq-cls", tok, rm=sc)

    out["rlhflow"] = _causal_lm_ckpt(
        root / "rlhflow", _tokenizer(llama3=True), LlamaConfig, 6
    )
    out["shepherd"] = _causal_lm_ckpt(
        root / "shepherd", _tokenizer(extra=("ки",)), MistralConfig, 8
    )
    return out


# ----------------------------------------------------------------------------- references
# Each follows the authors' published snippet, one unpadded sequence at a time.
@torch.no_grad()
def ref_value_head(
    c: Ckpt, texts: list[str]
) -> list[float]:  # Eurus / UltraRM model cards
    out = []
    for text in texts:
        inputs = c.tok(text, return_tensors="pt")
        hidden = c.backbone(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )[0]
        rewards = c.head(hidden).squeeze(-1)
        ends = inputs["attention_mask"].cumsum(dim=1).argmax(dim=1).view(-1, 1)
        out.append(torch.gather(rewards, 1, ends).item())
    return out


@torch.no_grad()
def ref_starling(
    c: Ckpt, questions=QUESTIONS, responses=RESPONSES
) -> list[float]:  # model card get_reward()
    tok = c.tok
    tok.pad_token = tok.unk_token
    tok.truncation_side = "left"
    samples = [
        f"<s>[INST] {q} </s> [/INST] {r}</s>"
        for q, r in zip(questions, responses, strict=True)
    ]
    enc = tok(
        samples,
        truncation=True,
        max_length=2048,
        padding="max_length",
        return_tensors="pt",
    )
    return [s.item() for s in c.rm(enc["input_ids"], enc["attention_mask"])]


def _chat_ids(tok, conv):
    enc = tok.apply_chat_template(conv, tokenize=True, return_tensors="pt")
    return enc["input_ids"] if hasattr(enc, "keys") else enc


@torch.no_grad()
def ref_seq_cls(c: Ckpt) -> list[float]:  # Skywork model card
    out = []
    for q, r in zip(QUESTIONS, RESPONSES, strict=True):
        ids = _chat_ids(
            c.tok, [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        )
        out.append(c.rm(ids).logits[0][0].item())
    return out


@torch.no_grad()
def ref_rlhflow_steps(
    c: Ckpt, orm: bool = False
) -> list[list[float]]:  # math-rm/prm_evaluate.py
    cand = [c.tok.encode("+")[-1], c.tok.encode("-")[-1]]
    out = []
    for prompt, ans in zip(QUESTIONS, RESPONSES, strict=True):
        ans_list = [ans] if orm else [j.strip() for j in ans.split("\n\n")]
        conversation, scores = [], []
        for k in range(len(ans_list)):
            text = prompt + " " + ans_list[0] if k == 0 else ans_list[k]
            conversation.append({"content": text, "role": "user"})
            conversation.append({"content": "+", "role": "assistant"})
            logits = c.lm(_chat_ids(c.tok, conversation)).logits[:, -3, cand]
            scores.append(logits.softmax(dim=-1)[:, 0][0].item())
        out.append(scores)
    return out


@torch.no_grad()
def ref_shepherd_steps(c: Ckpt) -> list[list[float]]:  # math-shepherd model card
    tok = c.tok
    # card: tokenizer.encode("+ -")[1:] -> [648, 387] for Mistral; here "+" and "-" are single chars
    candidate_tokens = [tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")]
    step_tag_id = tok.encode("ки")[-1]
    out = []
    for q, r in zip(QUESTIONS, RESPONSES, strict=True):
        output = "\n".join(s.strip() + " ки" for s in r.split("\n\n"))
        input_id = torch.tensor([tok.encode(f"{q} {output}")])
        logits = c.lm(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        out.append(scores[input_id == step_tag_id].tolist())
    return out


def _reference(name: str, c: Ckpt) -> list[float]:
    if name == "eurus":
        return ref_value_head(
            c,
            [
                f"[INST] {q} [/INST] {r}"
                for q, r in zip(QUESTIONS, RESPONSES, strict=True)
            ],
        )
    if name == "ultrarm":
        return ref_value_head(
            c,
            [
                f"Human: {q}\nAssistant: {r}"
                for q, r in zip(QUESTIONS, RESPONSES, strict=True)
            ],
        )
    if name == "starling":
        return ref_starling(c)
    if name in ("skywork", "skywork-v0.2", "seq-cls"):
        return ref_seq_cls(c)
    if name == "rlhflow-prm":
        return [sum(s) / len(s) for s in ref_rlhflow_steps(c)]
    if name == "rlhflow-orm":
        return [s[0] for s in ref_rlhflow_steps(c, orm=True)]
    if name == "math-shepherd":
        return [min(s) for s in ref_shepherd_steps(c)]
    raise AssertionError(name)


CKPT_OF = {
    "eurus": "eurus",
    "ultrarm": "ultrarm",
    "starling": "starling",
    "skywork": "skywork",
    "skywork-v0.2": "skywork",
    "seq-cls": "seq-cls",
    "rlhflow-prm": "rlhflow",
    "rlhflow-orm": "rlhflow",
    "math-shepherd": "shepherd",
}


def _load(name: str, c: Ckpt, **kw) -> Scorer:
    if name == "starling":
        kw.setdefault("base_model", str(c.base))
    return get_scorer(name).load(str(c.path), device="cpu", **kw)


# ----------------------------------------------------------------------------- tests
def test_registry():
    assert set(SCORERS) == {
        "eurus",
        "skywork",
        "skywork-v0.2",
        "starling",
        "ultrarm",
        "rlhflow-prm",
        "rlhflow-orm",
        "math-shepherd",
        "seq-cls",
        "token-prm",
    }
    assert get_scorer("eurus").default_model == "openbmb/Eurus-RM-7b"
    assert (
        get_scorer("skywork-v0.2").default_model
        == "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
    )
    assert (
        get_scorer("math-shepherd").default_model
        == "peiyi9979/math-shepherd-mistral-7b-prm"
    )
    with pytest.raises(UnknownScorerError, match="known scorers: .*eurus.*ultrarm"):
        get_scorer("nope")
    with pytest.raises(KeyError):
        get_scorer("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("eurus")(type("Other", (Scorer,), {}))
    with pytest.raises(TypeError):
        Scorer.load("x")
    with pytest.raises(ValueError, match="no default checkpoint"):
        get_scorer("seq-cls").load()
    with pytest.raises(TypeError):
        get_scorer("eurus").load("x", no_such_option=1)
    with pytest.raises(ValueError, match="step_tag"):
        get_scorer("token-prm").load("x")
    assert (
        aggregate([0.5, 0.25], "prod") == 0.125
        and aggregate([0.5, 0.25], "last") == 0.25
    )


@pytest.mark.parametrize("name", list(CKPT_OF))
def test_matches_author_reference(name, ckpts):
    c = ckpts[CKPT_OF[name]]
    ref = _reference(name, c)
    assert max(ref) - min(ref) > 0.05, (
        "degenerate fixture: scores do not depend on the input"
    )
    scorer = _load(name, c, batch_size=1)
    try:
        assert (
            scorer.num_parameters
            == sum(p.numel() for p in scorer.model.parameters())
            > 0
        )
        for batch_size, side in [(1, "right"), (3, "right"), (3, "left"), (2, "left")]:
            scorer.batch_size, scorer.padding_side = batch_size, side
            got = scorer.score(QUESTIONS, RESPONSES)
            assert all(isinstance(x, float) for x in got)
            assert got == pytest.approx(ref, abs=TOL), (batch_size, side)
    finally:
        scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score(QUESTIONS, RESPONSES)
    scorer.close()  # idempotent


def test_step_scores_and_aggregations(ckpts):
    c = ckpts["rlhflow"]
    ref = ref_rlhflow_steps(c)
    prm = _load("rlhflow-prm", c, batch_size=3, padding_side="left", aggregation="min")
    steps = prm.score_steps(QUESTIONS, RESPONSES)
    assert [len(s) for s in steps] == [2, 4, 1]
    for got, want in zip(steps, ref, strict=True):
        assert got == pytest.approx(want, abs=TOL)
    assert prm.score(QUESTIONS, RESPONSES) == pytest.approx(
        [min(s) for s in ref], abs=TOL
    )
    for how in ("last", "prod", "mean"):
        prm.aggregation = how
        assert prm.score(QUESTIONS, RESPONSES) == pytest.approx(
            [aggregate(s, how) for s in ref], abs=TOL
        )
    prm.close()

    c = ckpts["shepherd"]
    sh = _load("math-shepherd", c, batch_size=2, aggregation="mean")
    assert sh.candidate_ids == (
        c.tok.convert_tokens_to_ids("+"),
        c.tok.convert_tokens_to_ids("-"),
    )
    assert sh.format("Q", "a\n\n b \n\n\n\nc") == "Q a ки\nb ки\nc ки"
    ref = ref_shepherd_steps(c)
    assert [len(s) for s in ref] == [2, 4, 1]
    assert sh.score_steps(QUESTIONS, RESPONSES) == [
        pytest.approx(s, abs=TOL) for s in ref
    ]
    assert sh.score(QUESTIONS, RESPONSES) == pytest.approx(
        [sum(s) / len(s) for s in ref], abs=TOL
    )
    sh.close()
    # the generic tag PRM is the same computation once given the tag
    tp = get_scorer("token-prm").load(str(c.path), device="cpu", step_tag="ки")
    assert tp.score(QUESTIONS, RESPONSES) == pytest.approx(
        [min(s) for s in ref], abs=TOL
    )
    tp.close()


def test_formats_and_bos(ckpts):
    c = ckpts["skywork"]
    sk = _load("skywork", c)
    ids = sk._encode("q", "r").input_ids
    bos = c.tok.bos_token_id
    assert (
        ids[0] == bos and ids.count(bos) == 1
    )  # template BOS only, not tokenizer's too
    assert ids == _chat_ids(c.tok, sk.messages("q", "r"))[0].tolist()
    sk.close()

    c = ckpts["starling"]
    st = _load("starling", c)
    assert st.max_length == 2048 and st.truncation_side == "left"
    assert (
        st._encode("q", "r").input_ids[:2] == [c.tok.bos_token_id] * 2
    )  # card: tokenizer BOS + literal <s>
    st.close()
    st = _load("starling", c, add_special_tokens=False, max_length=8)
    enc = st._encode("q", "a long response")
    assert enc.input_ids[0] != c.tok.bos_token_id and len(enc.input_ids) == 8
    assert enc.input_ids[-1] == c.tok.eos_token_id and enc.positions == [7]
    st.close()

    c = ckpts["eurus"]
    eu = _load("eurus", c)
    assert eu.format("q", "a") == "[INST] q [/INST] a"
    eu.close()
    eu = _load("eurus", c, inst_close="[\\INST]")
    assert eu.format("q", "a") == "[INST] q [\\INST] a"
    assert eu.score(QUESTIONS, RESPONSES) == pytest.approx(
        ref_value_head(
            c,
            [
                f"[INST] {q} [\\INST] {r}"
                for q, r in zip(QUESTIONS, RESPONSES, strict=True)
            ],
        ),
        abs=TOL,
    )
    with pytest.raises(ValueError, match="2 questions but 3"):
        eu.score(QUESTIONS[:2], RESPONSES)
    eu.close()


def _corrupt_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    for f in list(dst.iterdir()):
        if f.suffix == ".safetensors":
            state = load_file(str(f))
            edit(state)
            save_file(state, str(f), metadata={"format": "pt"})
        elif f.suffix == ".bin":
            state = torch.load(f, weights_only=True)
            edit(state)
            torch.save(state, f)
    return dst


def _rename(old: str, new: str):
    def edit(state):
        if old in state:
            state[new] = state.pop(old)

    return edit


def _drop(key: str):
    return lambda state: state.pop(key, None)


@pytest.mark.parametrize(
    "name, edit, match",
    [
        (
            "eurus",
            _rename("regression_head.weight", "score.weight"),
            "regression_head.weight",
        ),
        ("ultrarm", _drop("model.layers.1.mlp.up_proj.weight"), "up_proj"),
        ("starling", _rename("v_head.weight", "value_head.weight"), "v_head.weight"),
        (
            "starling",
            _drop("transformer.norm.weight"),
            None,
        ),  # model.model.* copy is ignored
        ("skywork", _drop("score.weight"), "score.weight"),
        ("rlhflow-prm", _rename("lm_head.weight", "head.weight"), "lm_head.weight"),
        (
            "math-shepherd",
            _drop("model.layers.0.input_layernorm.weight"),
            "input_layernorm",
        ),
    ],
)
def test_missing_or_misnamed_weight_raises(name, edit, match, ckpts, tmp_path):
    c = ckpts[CKPT_OF[name]]
    bad = _corrupt_copy(c.path, tmp_path / "bad", edit)
    kw = {"base_model": str(c.base)} if name == "starling" else {}
    with pytest.raises(WeightLoadError, match=match):
        get_scorer(name).load(str(bad), device="cpu", **kw)


def test_starling_accepts_backbone_under_model_model_only(ckpts, tmp_path):
    c = ckpts["starling"]

    def only_model_model(state):
        for k in [k for k in state if k.startswith("transformer.")]:
            del state[k]

    alt = _corrupt_copy(c.path, tmp_path / "alt", only_model_model)
    st = get_scorer("starling").load(str(alt), device="cpu", base_model=str(c.base))
    assert st.score(QUESTIONS, RESPONSES) == pytest.approx(ref_starling(c), abs=TOL)
    st.close()


def test_starling_truncation_keeps_bos(ckpts):
    """Longer than 2048 tokens: the card's tokenizer truncates from the left and keeps its BOS."""
    c = ckpts["starling"]
    long = "Step 1: 2+3 = 5.\n\n" * 150
    st = _load("starling", c)
    row = st._encode(QUESTIONS[0], long).input_ids
    assert (
        len(row) == 2048
        and row[0] == c.tok.bos_token_id
        and row.count(c.tok.bos_token_id) == 1
    )
    ref = ref_starling(c, [QUESTIONS[0], QUESTIONS[1]], [long, RESPONSES[1]])
    assert st.score(
        [QUESTIONS[0], QUESTIONS[1]], [long, RESPONSES[1]]
    ) == pytest.approx(ref, abs=TOL)
    st.close()


# ----------------------------------------------------------------------------- the SWIFT paper's protocol
# Built literally from aster2024/SWIFT eval/get_baseline_rewards.py (compute_reward) and utils.py (get_instruction).
INSTRUCTION = (
    "Solve the following math problem step-by-step.\n"
    "Simplify your answer as much as possible. Present your final answer as \\boxed{Your Answer}.\n"
)


def _paper_ids(name: str, tok, prompt: str, response: str) -> list[int]:
    if name in ("skywork", "skywork-v0.2", "seq-cls"):
        conversation = [
            {"content": prompt, "role": "user"},
            {"content": response, "role": "assistant"},
        ]
        return _chat_ids(tok, conversation)[0].tolist()
    if name == "eurus":
        return tok(f"[INST] {prompt} [/INST] {response}")["input_ids"]
    if name == "ultrarm":
        input_text = f"""Human: {prompt}

        Assistant: {response}"""
        return tok(input_text)["input_ids"]
    if name == "starling":
        return tok(f"<s>[INST] {prompt} </s> [/INST] {response}</s>")["input_ids"]
    if name == "rlhflow-orm":
        conversation = [
            {"content": prompt + " " + response, "role": "user"},
            {"content": "+", "role": "assistant"},
        ]
        return _chat_ids(tok, conversation)[0].tolist()
    if name == "math-shepherd":
        return tok.encode(f"{prompt} {response} ки")
    raise AssertionError(name)


@torch.no_grad()
def _paper_score(name: str, c: Ckpt, ids: list[int]) -> float:
    input_ids = torch.tensor([ids])
    if name in ("eurus", "ultrarm"):
        hidden = c.backbone(input_ids=input_ids)[0]
        return c.head(hidden)[0, -1, 0].item()
    if name == "starling":
        return c.rm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))[
            0
        ].item()
    if name in ("skywork", "skywork-v0.2", "seq-cls"):
        return c.rm(input_ids).logits[0][0].item()
    tok = c.tok
    candidate_tokens = [tok.encode("+")[-1], tok.encode("-")[-1]]
    if name == "rlhflow-orm":
        logits = c.lm(input_ids).logits[:, -3, candidate_tokens]
        return logits.softmax(dim=-1)[:, 0].item()
    final_tag_id = tok.encode("ки")[-1]
    scores = c.lm(input_ids).logits[:, :, candidate_tokens].softmax(dim=-1)[:, :, 0]
    return scores[input_ids == final_tag_id].item()


PAPER_SCORERS = [
    "eurus",
    "skywork",
    "skywork-v0.2",
    "ultrarm",
    "starling",
    "rlhflow-orm",
    "math-shepherd",
]


@pytest.mark.parametrize("name", PAPER_SCORERS)
def test_paper_protocol_matches_the_papers_script(name, ckpts):
    c = ckpts[CKPT_OF[name]]
    want_ids = [
        _paper_ids(name, c.tok, INSTRUCTION + q, r)
        for q, r in zip(QUESTIONS, RESPONSES, strict=True)
    ]
    want = [_paper_score(name, c, ids) for ids in want_ids]
    # Math-Shepherd's P("+") at the final tag is small here: compare it relatively
    tol = {"rel": 1e-3, "abs": 1e-7} if name == "math-shepherd" else {"abs": TOL}
    assert (
        max(want) > 2 * min(want)
        if name == "math-shepherd"
        else max(want) - min(want) > 0.05
    )
    default = _load(name, c, protocol="paper")
    assert default.dtype == (
        torch.float32 if name == "starling" else torch.bfloat16
    )  # the script's dtypes
    default.close()
    scorer = _load(name, c, protocol="paper", dtype="float32")
    try:
        assert scorer.protocol == "paper" and scorer.instruction == INSTRUCTION
        got_ids = [
            scorer._encode(scorer.instruction + q, r).input_ids
            for q, r in zip(QUESTIONS, RESPONSES, strict=True)
        ]
        assert got_ids == want_ids
        for batch_size, side in [(1, "right"), (3, "left")]:
            scorer.batch_size, scorer.padding_side = batch_size, side
            assert scorer.score(QUESTIONS, RESPONSES) == pytest.approx(want, **tol), (
                batch_size,
                side,
            )
    finally:
        scorer.close()
    card = _load(name, c, dtype="float32")
    assert card.protocol == "card" and card.score(
        QUESTIONS, RESPONSES
    ) != pytest.approx(want, **tol)
    card.close()


def test_paper_protocol_options(ckpts):
    from lm_eval_swift.harness.tasks import PROMPT

    assert PAPER_INSTRUCTION == INSTRUCTION == PROMPT
    c = ckpts["shepherd"]
    sh = _load("math-shepherd", c, protocol="paper", dtype="float32")
    assert sh.outcome and sh.format("Q", "a\n\n b") == "Q a\n\n b ки"
    enc = sh._encode(
        "Q", "a ки b"
    )  # a tag inside the response: the appended one is read
    assert enc.positions == [len(enc.input_ids) - 1]
    sh.close()
    sh = _load(
        "math-shepherd",
        c,
        protocol="paper",
        step_tag_id=c.tok.convert_tokens_to_ids("Q"),
    )
    with pytest.raises(ValueError, match="not the last token"):
        sh.score(["Q"], ["a"])
    sh.close()
    # explicit options win over the protocol's, the instruction included
    st = _load(
        "starling", ckpts["starling"], protocol="paper", max_length=16, instruction=""
    )
    assert st.max_length == 16 and len(st._encode("q", "a response").input_ids) == 16
    st.close()
    with pytest.raises(ValueError, match="choose from card, paper"):
        _load("eurus", ckpts["eurus"], protocol="papers")


def test_scorer_specs_protocol():
    assert parse_scorer_specs("skywork, eurus", protocol="paper") == {
        "skywork": {"protocol": "paper"},
        "eurus": {"protocol": "paper"},
    }
    assert parse_scorer_specs(
        {"eurus": {"protocol": "card"}, "skywork": None}, protocol="paper"
    ) == {"eurus": {"protocol": "card"}, "skywork": {"protocol": "paper"}}
    assert parse_scorer_specs("eurus") == {"eurus": {}}
    with pytest.raises(ValueError, match="unknown reward-model protocol 'cards'"):
        parse_scorer_specs("eurus", protocol="cards")
    with pytest.raises(ValueError, match="choose from card, paper"):
        parse_scorer_specs('{"eurus": {"protocol": "x"}}')


def test_rescore_cli_paper_protocol(ckpts, tmp_path):
    c = ckpts["ultrarm"]
    rollouts = [
        QuestionRollout(
            "t",
            i,
            "math",
            q,
            q,
            "5",
            [Response(r, "5", 1.0, 0, 3), Response(r[:9], None, 0.0, -1, 2)],
        )
        for i, (q, r) in enumerate(zip(QUESTIONS, RESPONSES, strict=True))
    ]
    path = write_rollouts(rollouts, tmp_path / "rollouts.jsonl")
    spec = json.dumps(
        {"ultrarm": {"model": str(c.path), "dtype": "float32", "device": "cpu"}}
    )
    cmd = [
        sys.executable,
        "-m",
        "lm_eval_swift",
        "rescore",
        str(path),
        "--scorer",
        spec,
        "--rm-protocol",
        "paper",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    got = [resp.scores["ultrarm"] for r in read_rollouts(path) for resp in r.responses]
    pairs = [(r.question, resp.text) for r in rollouts for resp in r.responses]
    want = [
        _paper_score("ultrarm", c, _paper_ids("ultrarm", c.tok, INSTRUCTION + q, a))
        for q, a in pairs
    ]
    assert got == pytest.approx(want, abs=TOL)
    bad = subprocess.run(
        cmd[:-1] + ["papers"], check=False, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'papers'" in bad.stderr


# ----------------------------------------------------------------------------- SentencePiece-only checkpoints
def _sentencepiece_dir(d: Path):
    """A Llama-style tokenizer as Eurus-RM-7b and Math-Shepherd ship it: tokenizer.model + tokenizer_config.json."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((QUESTIONS + RESPONSES) * 10),
        model_writer=model,
        vocab_size=120,
        model_type="bpe",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["ки", "+", "-"],
        minloglevel=2,
    )
    d.mkdir()
    (d / "tokenizer.model").write_bytes(model.getvalue())
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        )
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.mark.parametrize("name", ["eurus", "math-shepherd"])
def test_sentencepiece_only_tokenizer(name, tmp_path):
    d = tmp_path / name
    sp = _sentencepiece_dir(d)
    cfg = MistralConfig(
        vocab_size=sp.get_piece_size(),
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **TINY,
    )
    torch.manual_seed(9)
    if name == "eurus":
        backbone = MistralModel(cfg).eval()
        state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
        state["regression_head.weight"] = (
            _head(cfg.hidden_size, 10).weight.detach().clone()
        )
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(d)
    else:
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    assert sorted(f.name for f in d.iterdir() if "token" in f.name) == [
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    scorer = get_scorer(name).load(str(d), device="cpu")
    try:
        text = f"{QUESTIONS[1]} {RESPONSES[1]}"
        assert scorer.tokenizer(text)["input_ids"] == [1] + sp.encode(text)
        rewards = scorer.score(QUESTIONS, RESPONSES)
        assert all(isinstance(x, float) and math.isfinite(x) for x in rewards)
        if name == "eurus":  # the model card's read-out on the SentencePiece ids
            ids = torch.tensor(
                [[1] + sp.encode(f"[INST] {QUESTIONS[0]} [/INST] {RESPONSES[0]}")]
            )
            with torch.no_grad():
                want = (
                    state["regression_head.weight"] @ backbone(input_ids=ids)[0][0, -1]
                )
            assert rewards[0] == pytest.approx(want.item(), abs=TOL)
        else:  # a "+"/"-" probability per step: the tags were found
            assert [len(s) for s in scorer.score_steps(QUESTIONS, RESPONSES)] == [
                2,
                4,
                1,
            ]
    finally:
        scorer.close()


def test_task_metadata_rm_protocol(shared_data):
    """``--metadata '{"scorers": ..., "rm_protocol": "paper"}'`` reaches every scorer the task loads."""
    from lm_eval.tasks import TaskManager

    from lm_eval_swift.paths import tasks_dir

    meta = {
        "n": 4,
        "data_dir": str(shared_data),
        "scorers": {"eurus": {}, "skywork": {"protocol": "card"}},
        "rm_protocol": "paper",
    }
    tm = TaskManager(
        include_path=str(tasks_dir()), include_defaults=False, metadata=meta
    )
    task = tm.load("gsm8k_bon_swift")["tasks"]["gsm8k_bon_swift"]
    assert task.scorer_specs == {
        "eurus": {"protocol": "paper"},
        "skywork": {"protocol": "card"},
    }


# ----------------------------------------------------------------------------- the paper protocol's numerics
def _bf16_exact(x: float) -> bool:
    return torch.tensor(x).to(torch.bfloat16).float().item() == x


def _bf16_copy(module: nn.Module) -> nn.Module:
    """``module`` as ``from_pretrained(..., torch_dtype=torch.bfloat16)`` builds it: bf16 weights, buffers (the
    rotary ``inv_freq``, computed in float32) untouched -- unlike ``module.to(torch.bfloat16)``."""
    import copy

    out = copy.deepcopy(module)
    for p in out.parameters():
        p.data = p.data.to(torch.bfloat16)
    return out


@pytest.mark.parametrize("name", ["eurus", "ultrarm"])
def test_paper_protocol_runs_eager_attention_in_bf16(name, ckpts):
    """The authors' Eurus/UltraRM classes run eager attention: paper-mode bf16 rewards equal theirs exactly."""
    c = ckpts[CKPT_OF[name]]
    backbone, head = _bf16_copy(c.backbone), _bf16_copy(c.head)
    backbone.config._attn_implementation = "eager"
    want = []
    with torch.no_grad():
        for q, r in zip(QUESTIONS, RESPONSES, strict=True):
            ids = torch.tensor([_paper_ids(name, c.tok, INSTRUCTION + q, r)])
            want.append(head(backbone(input_ids=ids)[0])[0, -1, 0].float().item())
    scorer = _load(name, c, protocol="paper", batch_size=1)
    try:
        assert scorer.model.config._attn_implementation == "eager"
        assert scorer.dtype == torch.bfloat16
        assert scorer.score(QUESTIONS, RESPONSES) == want
    finally:
        scorer.close()
    card = _load(name, c)
    assert card.attn_implementation is None  # the card keeps transformers' default
    card.close()


@pytest.mark.parametrize("name", ["rlhflow-orm", "math-shepherd"])
def test_paper_protocol_rounds_probabilities_as_a_bf16_softmax(name, ckpts):
    """The authors' ``logits.softmax(dim=-1)`` on their bf16 model: probabilities are bf16 values; ``card`` is fp32."""
    c = ckpts[CKPT_OF[name]]
    scorer = _load(name, c, protocol="paper", batch_size=1)
    try:
        assert scorer.dtype == torch.bfloat16 and scorer.softmax_dtype == "model"
        got = scorer.score(QUESTIONS, RESPONSES)
    finally:
        scorer.close()
    lm, tok = _bf16_copy(c.lm), c.tok
    cand = [tok.encode("+")[-1], tok.encode("-")[-1]]
    want = []
    with torch.no_grad():
        for q, r in zip(QUESTIONS, RESPONSES, strict=True):
            ids = torch.tensor([_paper_ids(name, tok, INSTRUCTION + q, r)])
            logits = lm(ids).logits[:, :, cand]
            assert logits.dtype == torch.bfloat16
            probs = logits.softmax(dim=-1)[0, :, 0]
            tag = tok.encode("ки")[-1]
            pos = -3 if name == "rlhflow-orm" else (ids[0] == tag).nonzero()[-1, 0]
            want.append(probs[pos].float().item())
    assert all(_bf16_exact(x) for x in got)
    assert got == want
    card = _load(name, c, dtype="bfloat16", batch_size=1)
    try:
        assert card.softmax_dtype == "float32"
        assert not all(_bf16_exact(x) for x in card.score(QUESTIONS, RESPONSES))
    finally:
        card.close()
    with pytest.raises(ValueError, match="softmax_dtype"):
        _load(name, c, softmax_dtype="bf16")


def test_ties_go_to_the_earliest_sample():
    """bf16 probabilities tie often; best-of-N picks the earliest of the tied samples, as the authors' argmax does."""
    from lm_eval_swift.bon.selectors import argmax

    rs = [
        Response(f"r{i}", None, 0.0, -1, 1, scores={"rm": s})
        for i, s in enumerate([0.5, 0.9375, 0.25, 0.9375])
    ]
    assert argmax(rs, "rm").text == "r1"
    assert argmax(list(reversed(rs)), "rm").text == "r3"
