"""Reward-model input ids vs. the ids transformers 4 (the reward models' own tokenizers) gives, recorded.

Tokenizer files:

- Mistral-7B v0.1's ``tokenizer.model`` (the tokenizer of Eurus-RM-7b and Math-Shepherd), shipped as
  ``mistral_common/data/tokenizer.model.v1`` by the ``mistral-common`` wheel (test extra);
- a Llama-2-chat-style ``tokenizer.json`` built from it: BPE with byte fallback, the legacy normalizer
  ``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokenizer, ``<unk>``/``<s>``/``</s>`` added unnormalized, post-processor
  ``<s> $A`` -- what transformers 4's ``LlamaConverter`` writes (:func:`llama2_style_tokenizer_json`, through this
  package's ``converted_llama_tokenizer``; its vocabulary, merges, normalizer and added tokens were identical to
  transformers 4.51.2's own conversion when the ids were recorded, and the recorded ids check it).

The ``RECORDED_*`` ids in :mod:`rm_token_ids` were produced once with transformers 4.51.2 (the SWIFT authors' pin)
and tokenizers 0.21.1: ``LlamaTokenizer.from_pretrained(d)(text)["input_ids"]`` (slow) and
``AutoTokenizer.from_pretrained(d)(text)["input_ids"]`` (fast) on directories holding these files and the
``tokenizer_config.json`` written below.  They are not computed by this package.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
from rm_token_ids import (
    RECORDED_FAST_NON_LEGACY,
    RECORDED_LLAMA2_JSON,
    RECORDED_SCORERS,
    RECORDED_SLOW_LEGACY,
    RECORDED_SLOW_NON_LEGACY,
    RECORDED_TRUNCATED,
    RECORDED_ULTRARM_NON_LEGACY,
)
from safetensors.torch import save_file
from tokenizers import processors
from transformers import AutoTokenizer, LlamaConfig, MistralConfig, MistralForCausalLM

from lm_eval_swift.scorers import (
    PAPER_INSTRUCTION,
    EurusRewardModel,
    StarlingRewardModel,
    UltraRMRewardModel,
    get_scorer,
)
from lm_eval_swift.scorers.tokenization import (
    SentencePieceEncoder,
    TokenizerFileEncoder,
    converted_llama_tokenizer,
    reference_encoder,
)


MISTRAL_V01_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

#: texts on which transformers 5 and SentencePiece / a legacy tokenizer.json disagree, and a few controls
HARD_TEXTS = [
    "a  b",
    "x </s> [/INST] y",
    "  - x\n  - y",
    "Step 1:  x",
    "Step 2:   compute",
    "\\begin{align}\n x &= 2 \\\\\n  &= 4\n\\end{align}",
    "def f(x):\n    if x:\n        return  1\n\treturn 0",
    "<s>[INST] What is 2+3? </s> [/INST] Step 1: 2+3 = 5.</s>",
    "Human: Q\n\n        Assistant: A",
    "literal <s> and </s>  then<unk>x",
    "</s>",
    " leading space",
    "trailing  ",
    "ки + -",
    "▁odd ▁ underscores",
    "",
    "naïve café 😀 ∑_{i=1}^n",
    "[INST] q [/INST]  two spaces after",
]

#: (question, response) pairs with runs of spaces, indents, LaTeX, code and literal special tokens
PAIRS = [
    (
        "Compute  $x$ if $2x = 4$.",
        "Step 1:  Divide both sides by 2.\n\n\\begin{align}\n  x &= 4/2 \\\\\n    &= 2\n\\end{align}\n\n"
        "The answer is $\\boxed{2}$.</s> Done",
    ),
    (
        "Write a function that doubles x.",
        "```python\ndef f(x):\n    return  x  * 2\n```\n\n- item one\n  - nested <s> item\n\nStep 2:   check it.",
    ),
]


def _shepherd_card(
    q: str, r: str
) -> str:  # the Math-Shepherd card's format, steps split on blank lines
    return f"{q} " + "\n".join(s.strip() + " ки" for s in r.split("\n\n"))


#: the literal input strings of the model cards / the SWIFT paper's script, per "scorer/protocol"
SCORER_TEXTS = {
    "eurus/card": lambda q, r: f"[INST] {q} [/INST] {r}",
    "eurus/paper": lambda q, r: f"[INST] {PAPER_INSTRUCTION + q} [/INST] {r}",
    "ultrarm/card": lambda q, r: f"Human: {q}\nAssistant: {r}",
    "ultrarm/paper": lambda q, r: (
        f"Human: {PAPER_INSTRUCTION + q}\n\n        Assistant: {r}"
    ),
    "math-shepherd/card": _shepherd_card,
    "math-shepherd/paper": lambda q, r: f"{PAPER_INSTRUCTION + q} {r} ки",
    "starling/card": lambda q, r: f"<s>[INST] {q} </s> [/INST] {r}</s>",
    "starling/paper": lambda q, r: (
        f"<s>[INST] {PAPER_INSTRUCTION + q} </s> [/INST] {r}</s>"
    ),
}

_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "tokenizer_class": "LlamaTokenizer",
}
#: Mistral-7B-v0.1 / Eurus-RM-7b / Math-Shepherd style (legacy SentencePiece)
MISTRAL_CONFIG = {**_SPECIALS, "legacy": True}
#: Llama-2-chat style: ``legacy: false`` (ignored by transformers 4 when a tokenizer.json is there), pads right
LLAMA2_CONFIG = {**_SPECIALS, "legacy": False, "padding_side": "right"}
#: UltraRM-13b style: a config that does not set ``legacy`` (transformers 4 then defaults it to True)
ULTRARM_CONFIG = dict(_SPECIALS)


@pytest.fixture(scope="module")
def mistral_model_file() -> Path:
    try:
        dist = metadata.distribution("mistral-common")
    except metadata.PackageNotFoundError:
        pytest.skip(
            "mistral-common (in the 'test' extra) is not installed; it ships Mistral-7B v0.1's tokenizer.model"
        )
    path = Path(dist.locate_file("mistral_common/data/tokenizer.model.v1"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MISTRAL_V01_SHA256
    return path


def llama2_style_tokenizer_json(model_file: Path, out: Path) -> None:
    """Llama-2-chat's kind of ``tokenizer.json``: transformers 4's legacy conversion, ``<unk>`` added, ``<s> $A``."""
    from tokenizers import AddedToken

    tok = converted_llama_tokenizer(model_file, {"legacy": True})
    tok.add_special_tokens([AddedToken("<unk>", normalized=False, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.save(str(out))


def _tokenizer_dir(
    d: Path,
    model_file: Path,
    config: dict,
    *,
    json_file: bool = False,
    model: bool = True,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if model:
        (d / "tokenizer.model").write_bytes(model_file.read_bytes())
    if json_file:
        llama2_style_tokenizer_json(model_file, d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def dirs(mistral_model_file, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rm_tokenizers")
    return {
        "mistral": _tokenizer_dir(root / "mistral", mistral_model_file, MISTRAL_CONFIG),
        "mistral-non-legacy": _tokenizer_dir(
            root / "mistral-nl", mistral_model_file, {**MISTRAL_CONFIG, "legacy": False}
        ),
        "llama2-json": _tokenizer_dir(
            root / "llama2",
            mistral_model_file,
            LLAMA2_CONFIG,
            json_file=True,
            model=False,
        ),
        "ultrarm": _tokenizer_dir(
            root / "ultrarm", mistral_model_file, ULTRARM_CONFIG, json_file=True
        ),
    }


# ----------------------------------------------------------------------------- encoders
@pytest.mark.parametrize(
    "which, recorded",
    [
        ("mistral", RECORDED_SLOW_LEGACY),
        ("mistral-non-legacy", RECORDED_SLOW_NON_LEGACY),
    ],
)
def test_sentencepiece_encoder_is_the_slow_llama_tokenizer(which, recorded, dirs):
    enc = reference_encoder(dirs[which], prefer="tokenizer.model")
    assert isinstance(enc, SentencePieceEncoder) and enc.legacy == (which == "mistral")
    assert [enc.encode(t) for t in HARD_TEXTS] == recorded


def test_sentencepiece_only_under_auto_tokenizer(dirs):
    """What transformers 4's AutoTokenizer made of a lone tokenizer.model: the slow ids when ``legacy`` (the
    conversion agrees with them), its converted fast tokenizer's ids when ``legacy: false`` (they differ)."""
    enc = reference_encoder(dirs["mistral"])
    assert isinstance(enc, SentencePieceEncoder)
    assert [enc.encode(t) for t in HARD_TEXTS] == RECORDED_SLOW_LEGACY
    enc = reference_encoder(dirs["mistral-non-legacy"])
    assert isinstance(enc, TokenizerFileEncoder)
    assert [enc.encode(t) for t in HARD_TEXTS] == RECORDED_FAST_NON_LEGACY
    assert RECORDED_FAST_NON_LEGACY != RECORDED_SLOW_NON_LEGACY
    legacy = TokenizerFileEncoder(
        converted_llama_tokenizer(dirs["mistral"] / "tokenizer.model"), MISTRAL_CONFIG
    )
    assert [legacy.encode(t) for t in HARD_TEXTS] == RECORDED_SLOW_LEGACY


def test_tokenizer_json_encoder_honours_the_files_normalizer(dirs):
    enc = reference_encoder(dirs["llama2-json"])
    assert isinstance(enc, TokenizerFileEncoder)
    assert [enc.encode(t) for t in HARD_TEXTS] == RECORDED_LLAMA2_JSON
    # the example: the authors get </s>, ▁, ▁[ -- the normalizer's ▁ on the segment after </s>
    assert enc.encode("</s> [/INST]", add_special_tokens=False) == [
        2,
        28705,
        733,
        28748,
        16289,
        28793,
    ]


@pytest.mark.parametrize("which", ["mistral", "llama2-json"])
def test_truncation_keeps_bos_and_cuts_the_left(which, dirs):
    enc = reference_encoder(dirs[which])
    got = [enc.encode(t, max_length=8, truncation_side="left") for t in HARD_TEXTS]
    assert got == RECORDED_TRUNCATED[which]


def test_reference_encoder_choice(dirs, tmp_path):
    # UltraRM's scorer asks for the slow tokenizer even where a tokenizer.json is present
    assert isinstance(
        reference_encoder(dirs["ultrarm"], prefer="tokenizer.model"),
        SentencePieceEncoder,
    )
    assert isinstance(reference_encoder(dirs["ultrarm"]), TokenizerFileEncoder)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        reference_encoder(tmp_path)
    with pytest.raises(ValueError, match="prefer must be"):
        reference_encoder(dirs["ultrarm"], prefer="vocab.txt")


def test_transformers_tokenizer_still_differs_where_documented(dirs):
    """Canary: the scorers bypass transformers' tokenizer because transformers 5 encodes these files differently.

    If this fails, transformers changed how it builds Llama/Mistral tokenizers: re-check the reference encoders'
    premises (``lm_eval_swift/scorers/tokenization.py``) and the README's reward-model section.
    """
    fast = AutoTokenizer.from_pretrained(dirs["llama2-json"])
    assert (
        fast("x </s> [/INST] y")["input_ids"] != RECORDED_LLAMA2_JSON[1]
    )  # the normalizer is dropped
    sp = AutoTokenizer.from_pretrained(dirs["mistral"])
    assert (
        sp("a  b")["input_ids"] != RECORDED_SLOW_LEGACY[0]
    )  # "▁▁", "b" instead of "▁", "▁b"


# ----------------------------------------------------------------------------- scorers on the real tokenizer
TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    vocab_size=32000,
    tie_word_embeddings=False,
)


def _value_head_dir(d: Path, model_cls, cfg) -> Path:
    torch.manual_seed(0)
    state = model_cls(cfg).state_dict()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors")
    )
    cfg.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def rm_dirs(dirs, mistral_model_file, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rm_ckpts")
    out = {}
    d = _tokenizer_dir(root / "eurus", mistral_model_file, MISTRAL_CONFIG)
    out["eurus"] = _value_head_dir(d, EurusRewardModel, MistralConfig(**TINY))
    d = _tokenizer_dir(
        root / "ultrarm", mistral_model_file, ULTRARM_CONFIG, json_file=True
    )
    out["ultrarm"] = _value_head_dir(d, UltraRMRewardModel, LlamaConfig(**TINY))
    d = _tokenizer_dir(
        root / "starling",
        mistral_model_file,
        LLAMA2_CONFIG,
        json_file=True,
        model=False,
    )
    torch.manual_seed(0)
    torch.save(
        StarlingRewardModel(LlamaConfig(**TINY)).state_dict(), d / "pytorch_model.bin"
    )
    LlamaConfig(**TINY).save_pretrained(d)
    out["starling"] = d
    d = _tokenizer_dir(root / "math-shepherd", mistral_model_file, MISTRAL_CONFIG)
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(**TINY)).save_pretrained(d)
    out["math-shepherd"] = d
    return out


@pytest.mark.parametrize("key", sorted(SCORER_TEXTS))
def test_scorer_inputs_are_the_reference_ids(key, rm_dirs):
    name, protocol = key.split("/")
    scorer = get_scorer(name).load(
        str(rm_dirs[name]), device="cpu", dtype="float32", protocol=protocol
    )
    try:
        for (q, r), want in zip(PAIRS, RECORDED_SCORERS[key], strict=True):
            ids = scorer._encode(scorer.instruction + q, r).input_ids
            if (
                name == "starling" and protocol == "card"
            ):  # padded to 2048 with <unk> (id 0), as the card does
                assert len(ids) == 2048 and set(ids[len(want) :]) == {0}
                ids = ids[: len(want)]
            assert ids == want
    finally:
        scorer.close()


def test_ultrarm_follows_the_configs_legacy_flag(mistral_model_file, tmp_path):
    """The slow tokenizer's ``legacy: false`` encodes the text after a literal ``</s>``/``<s>`` differently."""
    config = {**ULTRARM_CONFIG, "legacy": False}
    d = _tokenizer_dir(tmp_path / "ultrarm", mistral_model_file, config, json_file=True)
    _value_head_dir(d, UltraRMRewardModel, LlamaConfig(**TINY))
    for protocol in ("card", "paper"):
        want = RECORDED_ULTRARM_NON_LEGACY[f"ultrarm/{protocol}"]
        assert want != RECORDED_SCORERS[f"ultrarm/{protocol}"]
        scorer = get_scorer("ultrarm").load(
            str(d), device="cpu", dtype="float32", protocol=protocol
        )
        try:
            got = [
                scorer._encode(scorer.instruction + q, r).input_ids for q, r in PAIRS
            ]
        finally:
            scorer.close()
        assert got == want


def test_math_shepherd_derives_the_cards_token_ids(rm_dirs):
    """The card hard-codes ``candidate_tokens = [648, 387]`` and ``step_tag_id = 12902`` for this tokenizer."""
    sh = get_scorer("math-shepherd").load(str(rm_dirs["math-shepherd"]), device="cpu")
    try:
        assert sh.candidate_ids == (648, 387) and sh.step_tag_id == 12902
        assert [
            len(s) for s in sh.score_steps([q for q, _ in PAIRS], [r for _, r in PAIRS])
        ] == [3, 3]
    finally:
        sh.close()


def test_fallback_without_tokenizer_files(tmp_path):
    """No tokenizer.json and no Llama tokenizer.model: the loaded transformers tokenizer's ids, its BOS included."""
    from lm_eval_swift.scorers.tokenization import TransformersEncoder
    from lm_eval_swift.toy_models import char_tokenizer

    tok = char_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    enc = reference_encoder(tmp_path, fallback=tok)
    assert (
        isinstance(enc, TransformersEncoder)
        and enc.head == [tok.bos_token_id]
        and enc.tail == []
    )
    assert enc.encode("ab  c") == tok("ab  c")["input_ids"]
    assert enc.encode("abcdef", max_length=3) == [
        tok.bos_token_id,
        *tok("ef", add_special_tokens=False)["input_ids"],
    ]


#: sha256 of ``json.dumps([ids, ...])`` for the 320 SmolLM2 responses of ``REAL_ROLLOUTS``, the ids recorded with
#: transformers 4.51.2 as above (Eurus: ``AutoTokenizer`` = ``LlamaTokenizer`` on the Mistral directory; UltraRM:
#: ``LlamaTokenizer``; Starling: ``AutoTokenizer`` on the tokenizer.json directory).  transformers 5's own
#: tokenizers give other ids for 1169 of the 4800 Eurus inputs of the whole test split, and for every UltraRM and
#: Starling input.
REAL_ROLLOUTS = (
    "experiments/smollm2_gsm8k/rollouts/test/gsm8k_bon_swift_q0000-0019.jsonl.gz"
)
REAL_DIGESTS = {
    "eurus": "07741fc409bd86a3f52f7177b638c7fb5bc8ab83ead454894b394d1d2cd5021d",
    "ultrarm": "40cc778bf1b83917747886b9808c35c571b879e5dec78bbe6dd46fdc388246c5",
    "starling": "7bfbaa239b65a3e928d1ce20b4661a87aff6fa1238951d8ade22e0e8b2dae65c",
}


@pytest.mark.parametrize("name", sorted(REAL_DIGESTS))
def test_paper_inputs_of_real_responses_are_the_reference_ids(name, rm_dirs):
    import gzip

    path = Path(__file__).resolve().parents[1] / REAL_ROLLOUTS
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    pairs = [
        (row["question"], resp["text"]) for row in rows for resp in row["responses"]
    ]
    assert len(pairs) == 320
    # paper inputs; Starling's recorded without the instruction (the card's text, unpadded)
    extra = {"instruction": ""} if name == "starling" else {}
    scorer = get_scorer(name).load(
        str(rm_dirs[name]), device="cpu", dtype="float32", protocol="paper", **extra
    )
    try:
        ids = [scorer._encode(scorer.instruction + q, r).input_ids for q, r in pairs]
    finally:
        scorer.close()
    assert hashlib.sha256(json.dumps(ids).encode()).hexdigest() == REAL_DIGESTS[name]
