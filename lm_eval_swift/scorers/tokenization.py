"""Reward-model input ids exactly as each model's reference tokenizer gives them.

The reward models' authors ran transformers 4, where ``AutoTokenizer`` loads a ``tokenizer.json`` as the file
states it and ``LlamaTokenizer`` is the slow SentencePiece tokenizer.  transformers 5 rebuilds Llama/Mistral
tokenizers its own way (no normalizer, a ``Metaspace`` pre-tokenizer), which changes ids on real inputs:

- a Llama-2-chat ``tokenizer.json`` (Starling) carries ``Prepend("▁")`` + ``Replace(" ", "▁")``, applied to each
  segment between special tokens; transformers 5 drops it (``"</s> [/INST]"``: one ``▁`` token fewer);
- a SentencePiece ``tokenizer.model`` (Eurus-RM-7b, Math-Shepherd, UltraRM's slow tokenizer) splits a run of spaces
  as ``▁`` + ``▁b``; transformers 5's conversion merges ``▁▁`` + ``b`` (``"a  b"``, two-space indents, code).

So the ids come from the files themselves, never from a transformers tokenizer:

- :class:`TokenizerFileEncoder`: ``tokenizers.Tokenizer.from_file("tokenizer.json")`` (transformers 4's fast
  tokenizer);
- :class:`SentencePieceEncoder`: ``sentencepiece`` driven as transformers 4's slow ``LlamaTokenizer`` drives it
  (split on special tokens with their ``lstrip``/``rstrip``, ``legacy`` and ``add_prefix_space`` from
  ``tokenizer_config.json``).

For a lone ``tokenizer.model`` with ``legacy: false``, transformers 4's ``AutoTokenizer`` gave the ids of its own
conversion (:func:`converted_llama_tokenizer`), not the slow tokenizer's; with ``legacy`` (the default) the two agree.
:func:`reference_encoder` picks one for a tokenizer directory.  All encoders add special tokens and truncate as
transformers 4 does (``truncation=True, max_length=...``: the special tokens are kept, the text is cut).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


__all__ = [
    "LLAMA_TOKENIZER_CLASSES",
    "ReferenceEncoder",
    "SentencePieceEncoder",
    "TokenizerFileEncoder",
    "TransformersEncoder",
    "converted_llama_tokenizer",
    "reference_encoder",
    "tokenizer_config",
]

SPIECE_UNDERLINE = "▁"

#: ``tokenizer_class`` values (``Fast`` suffix stripped) handled as transformers 4's LlamaTokenizer(Fast): BOS/EOS
#: from ``add_bos_token``/``add_eos_token`` (defaults True/False), and the slow tokenizer's SentencePiece rules.
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "CodeLlamaTokenizer")

#: special-token keys of ``tokenizer_config.json`` (transformers' ``SPECIAL_TOKENS_ATTRIBUTES`` that Llama uses).
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def tokenizer_config(directory: str | Path) -> dict[str, Any]:
    """``tokenizer_config.json`` of ``directory`` as a dict (empty when the file is absent)."""
    path = Path(directory) / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _is_llama_class(config: dict[str, Any]) -> bool:
    cls = str(config.get("tokenizer_class") or "LlamaTokenizer").removesuffix("Fast")
    return cls in LLAMA_TOKENIZER_CLASSES


def _token_spec(value: Any) -> dict[str, Any] | None:
    """A special token of the config (a string or an ``AddedToken`` dict) as a dict with ``content``."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value}
    return dict(value)


#: the Llama tokenizer classes' defaults for special tokens a config does not name
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _config_tokens(
    config: dict[str, Any], *, llama: bool = False
) -> tuple[dict[str, dict], list[dict]]:
    """(named special tokens ``{"bos_token": spec, ...}``, every other added/special token of the config).

    ``llama``: a key the config does not have takes the Llama classes' default (``<s>``, ``</s>``, ``<unk>``).
    """
    if llama:
        config = {**_LLAMA_DEFAULTS, **config}
    named = {k: s for k in _SPECIAL_KEYS if (s := _token_spec(config.get(k)))}
    others = [
        {**spec, "id": int(i)}
        for i, spec in config.get("added_tokens_decoder", {}).items()
    ]
    others += [
        _token_spec(t) | {"special": True}
        for t in config.get("additional_special_tokens") or ()
    ]
    return named, others


class ReferenceEncoder:
    """Text -> token ids as a reference tokenizer gives them.

    Subclasses set :attr:`head` / :attr:`tail` (the special ids ``add_special_tokens=True`` puts around the text),
    ``bos_id``/``eos_id``/``unk_id``/``unk_token``/:attr:`special_ids` and implement :meth:`_text_ids`.
    """

    head: list[int]
    tail: list[int]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    unk_token: str | None = None
    special_ids: frozenset[int] = frozenset()
    #: what the ids reproduce, for messages and reprs
    kind = "reference tokenizer"

    def _text_ids(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation_side: str = "left",
    ) -> list[int]:
        """Token ids of ``text``; at most ``max_length`` of them (special tokens kept, text cut on ``truncation_side``)."""
        ids = self._text_ids(text)
        head, tail = (self.head, self.tail) if add_special_tokens else ([], [])
        if max_length is not None:
            keep = max(max_length - len(head) - len(tail), 0)
            if len(ids) > keep:
                ids = (
                    ids[len(ids) - keep :] if truncation_side == "left" else ids[:keep]
                )
        return [*head, *ids, *tail]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind})"


def _split_around(
    with_special: Sequence[int], plain: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(head, tail) such that ``with_special == head + plain + tail`` (what a post-processor adds)."""
    n = len(plain)
    for i in range(len(with_special) - n + 1):
        if list(with_special[i : i + n]) == list(plain):
            return list(with_special[:i]), list(with_special[i + n :])
    raise ValueError(
        "cannot tell which special tokens the tokenizer adds: the text's ids are not a contiguous part of the "
        "ids with special tokens"
    )


class TokenizerFileEncoder(ReferenceEncoder):
    """A ``tokenizer.json`` encoded by the ``tokenizers`` library as the file states it (normalizer included).

    This is what transformers 4's fast tokenizer does with the file.  Special tokens: for a Llama-class
    ``tokenizer_config.json``, BOS/EOS per ``add_bos_token``/``add_eos_token`` (transformers 4's
    ``LlamaTokenizerFast.update_post_processor``); otherwise those of the file's post-processor.  Special tokens
    named by the config but absent from the file are added, as transformers 4 adds them.
    """

    kind = "tokenizer.json via tokenizers"

    def __init__(
        self,
        json_file: str | Path | Any,
        config: dict[str, Any] | None = None,
        *,
        llama: bool | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        config = dict(config or {})
        if isinstance(
            json_file, Tokenizer
        ):  # built in memory: converted_llama_tokenizer
            self.tokenizer = json_file
        else:
            self.tokenizer = Tokenizer.from_file(str(json_file))
        if llama is None:
            llama = _is_llama_class(config) and bool(config.get("tokenizer_class"))
        named, others = _config_tokens(config, llama=llama)
        self._add_missing_tokens([*named.values(), *others])
        ids = {k: self.tokenizer.token_to_id(s["content"]) for k, s in named.items()}
        self.bos_id, self.eos_id, self.unk_id = (ids.get(k) for k in _SPECIAL_KEYS[:3])
        self.unk_token = named["unk_token"]["content"] if "unk_token" in named else None
        decoder = self.tokenizer.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in decoder.items() if t.special)
        if llama:
            self.head = [self.bos_id] if config.get("add_bos_token", True) else []
            self.tail = [self.eos_id] if config.get("add_eos_token", False) else []
            if None in self.head + self.tail:
                raise ValueError(
                    "add_bos_token/add_eos_token set but the tokenizer lacks that token"
                )
        else:
            probe = "a"
            self.head, self.tail = _split_around(
                self.tokenizer.encode(probe).ids,
                self.tokenizer.encode(probe, add_special_tokens=False).ids,
            )

    def _add_missing_tokens(self, specs: list[dict[str, Any]]) -> None:
        from tokenizers import AddedToken

        present = {
            t.content for t in self.tokenizer.get_added_tokens_decoder().values()
        }
        for spec in specs:
            if spec["content"] in present:
                continue
            token = AddedToken(
                spec["content"],
                single_word=bool(spec.get("single_word", False)),
                lstrip=bool(spec.get("lstrip", False)),
                rstrip=bool(spec.get("rstrip", False)),
                normalized=bool(spec.get("normalized", False)),
                special=bool(spec.get("special", True)),
            )
            self.tokenizer.add_special_tokens([token])
            present.add(spec["content"])

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


class SentencePieceEncoder(ReferenceEncoder):
    """A ``tokenizer.model`` encoded by ``sentencepiece`` as transformers 4's slow ``LlamaTokenizer`` does.

    1. The text is split on added tokens (``<unk>``, ``<s>``, ``</s>``, those of ``added_tokens_decoder``; the
       longest match at the leftmost position), a token's ``lstrip``/``rstrip`` stripping the whitespace beside it.
    2. ``legacy`` (the config's; default True, as transformers 4 defaults it): every other segment is
       ``sp.encode(segment)`` with the model's own normalizer, so each gets SentencePiece's dummy ``▁`` prefix.
       ``legacy=False``: the dummy prefix is switched off in the model proto, ``▁`` is prepended to the whole text
       (``add_prefix_space``, default True), a segment starting with a space is encoded behind ``<unk>`` and the
       ``<unk>`` pieces dropped, and a lone leading ``▁`` before a special token is dropped.
    3. Pieces -> ids through the added tokens first, then the SentencePiece vocabulary; BOS/EOS per
       ``add_bos_token``/``add_eos_token`` (defaults True/False).
    """

    kind = "tokenizer.model via sentencepiece (transformers 4's slow LlamaTokenizer)"

    def __init__(
        self, model_file: str | Path, config: dict[str, Any] | None = None
    ) -> None:
        import sentencepiece as spm

        config = dict(config or {})
        legacy = config.get("legacy")
        self.legacy = True if legacy is None else bool(legacy)
        self.add_prefix_space = config.get("add_prefix_space", True)
        proto = Path(model_file).read_bytes()
        if not self.legacy:
            proto = _without_dummy_prefix(proto)
        self.sp = spm.SentencePieceProcessor(**(config.get("sp_model_kwargs") or {}))
        self.sp.LoadFromSerializedProto(proto)
        self._set_special_tokens(config)
        self.head = [self.bos_id] if config.get("add_bos_token", True) else []
        self.tail = [self.eos_id] if config.get("add_eos_token", False) else []
        if None in self.head + self.tail:
            raise ValueError(
                f"{model_file}: add_bos_token/add_eos_token set but the config names no such token"
            )

    def _set_special_tokens(self, config: dict[str, Any]) -> None:
        named, others = _config_tokens(config, llama=True)
        self.added: dict[str, int] = {}
        self._strip: dict[str, tuple[bool, bool]] = {}
        # the config's added_tokens_decoder first: its entries win over the plain special-token strings
        for spec in [*others, *named.values()]:
            if spec.get("single_word"):
                raise ValueError(
                    f"added token {spec['content']!r}: single_word is not supported"
                )
            tid = spec.get("id", self.sp.piece_to_id(spec["content"]))
            if "id" not in spec and self.sp.id_to_piece(tid) != spec["content"]:
                raise ValueError(
                    f"special token {spec['content']!r} is not in the SentencePiece vocabulary"
                )
            self.added.setdefault(spec["content"], int(tid))
            self._strip.setdefault(
                spec["content"], (bool(spec.get("lstrip")), bool(spec.get("rstrip")))
            )
        self.bos_id, self.eos_id, self.unk_id = (
            self.added[named[k]["content"]] for k in _SPECIAL_KEYS[:3]
        )
        self.unk_token = named["unk_token"]["content"]
        self._all_special = {s["content"] for s in named.values()} | {
            s["content"] for s in others if s.get("special")
        }
        self.special_ids = frozenset(self.added[c] for c in self._all_special)
        alternatives = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._unk_length = len(self.sp.encode(self.unk_token, out_type=str))

    def _segments(self, text: str) -> list[str]:
        """``text`` split on added tokens, whitespace stripped beside tokens with ``lstrip``/``rstrip``."""
        parts = self._split.split(text)
        for i, part in enumerate(parts):
            if i % 2 == 0:  # re.split with one group: odd indices are the tokens
                continue
            lstrip, rstrip = self._strip[part]
            if rstrip and i + 1 < len(parts) and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        return parts

    def _pieces_of(self, segment: str) -> list[str]:
        if self.legacy or not segment.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(segment, out_type=str)
        pieces = self.sp.encode(self.unk_token + segment, out_type=str)
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces

    def pieces(self, text: str) -> list[str]:
        """The slow tokenizer's ``tokenize(text)``: SentencePiece pieces and added-token strings."""
        if not self.legacy and text:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text = SPIECE_UNDERLINE + text
        out: list[str] = []
        for i, part in enumerate(self._segments(text)):
            if part and i % 2:
                out.append(part)
            elif part:
                out.extend(self._pieces_of(part))
        if (
            not self.legacy
            and len(out) > 1
            and out[0] == SPIECE_UNDERLINE
            and out[1] in self._all_special
        ):
            out = out[1:]
        return out

    def _text_ids(self, text: str) -> list[int]:
        return [
            self.added[p] if p in self.added else self.sp.piece_to_id(p)
            for p in self.pieces(text)
        ]


def _without_dummy_prefix(proto: bytes) -> bytes:
    """The SentencePiece model proto with ``add_dummy_prefix`` off (the slow tokenizer's ``legacy=False`` load)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    model.normalizer_spec.add_dummy_prefix = False
    return model.SerializeToString()


def converted_llama_tokenizer(
    model_file: str | Path, config: dict[str, Any] | None = None
) -> Any:
    """The fast tokenizer transformers 4's ``AutoTokenizer`` builds from a Llama ``tokenizer.model`` alone.

    Its ``LlamaConverter``: a BPE over the SentencePiece vocabulary with byte fallback, merges = every split of a
    piece into two pieces, ordered by the piece's score; control and user-defined pieces added unnormalized; then
    ``legacy`` (default True): normalizer ``Prepend("▁")`` (when ``add_prefix_space``) + ``Replace(" ", "▁")``;
    ``legacy=False``: no normalizer, pre-tokenizer ``Metaspace("▁", prepend_scheme="first", split=False)``
    (``"never"`` without ``add_prefix_space``).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    config = dict(config or {})
    proto = sentencepiece_model_pb2.ModelProto.FromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != 2:
        raise ValueError(f"{model_file}: not a SentencePiece BPE model")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for i, p in enumerate(proto.pieces):
        score = (
            0.0 if i < 3 else p.score
        )  # LlamaConverter.vocab: <unk>, <s>, </s> score 0
        s = p.piece
        local = [
            (s[:k], s[k:], score)
            for k in range(1, len(s))
            if s[:k] in vocab and s[k:] in vocab
        ]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    bpe = BPE(
        vocab,
        [(a, b) for a, b, _ in merges],
        unk_token=proto.trainer_spec.unk_piece,
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(bpe)
    named = {spec["content"] for spec in _config_tokens(config, llama=True)[0].values()}
    added = [p for p in proto.pieces if p.type in (3, 4)]  # control, user-defined
    tok.add_tokens(
        [
            AddedToken(
                p.piece, normalized=False, special=p.type == 3 or p.piece in named
            )
            for p in added
        ]
    )
    add_prefix_space = config.get("add_prefix_space", True)
    if config.get("legacy") is not False:
        prepend = [normalizers.Prepend("▁")] if add_prefix_space else []
        tok.normalizer = normalizers.Sequence([*prepend, normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁",
            prepend_scheme="first" if add_prefix_space else "never",
            split=False,
        )
    return tok


class TransformersEncoder(ReferenceEncoder):
    """Fallback for tokenizers with neither file: the loaded transformers tokenizer's own ids."""

    kind = "the transformers tokenizer (no tokenizer.json or Llama tokenizer.model to reproduce)"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.unk_id = (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.unk_token_id,
        )
        self.unk_token = tokenizer.unk_token
        self.special_ids = frozenset(tokenizer.all_special_ids)
        probe = "a"
        self.head, self.tail = _split_around(
            tokenizer(probe)["input_ids"], self._text_ids(probe)
        )

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def reference_encoder(
    directory: str | Path, *, prefer: str = "tokenizer.json", fallback: Any = None
) -> ReferenceEncoder:
    """The reference encoder of the tokenizer files in ``directory``.

    ``prefer="tokenizer.json"`` (what transformers 4's ``AutoTokenizer`` loads): the file; else a Llama-class
    ``tokenizer.model``, which ``AutoTokenizer`` converted (:func:`converted_llama_tokenizer`).  With ``legacy``
    (the default) the conversion gives the slow tokenizer's ids, so :class:`SentencePieceEncoder` encodes it; with
    ``legacy: false`` it does not, and the converted tokenizer is used.  ``prefer="tokenizer.model"``: the slow
    ``LlamaTokenizer`` first (what a script calling ``LlamaTokenizer.from_pretrained`` used).  With neither file,
    :class:`TransformersEncoder` around ``fallback`` (a loaded transformers tokenizer), else an error.
    """
    if prefer not in ("tokenizer.json", "tokenizer.model"):
        raise ValueError(
            f"prefer must be 'tokenizer.json' or 'tokenizer.model', not {prefer!r}"
        )
    directory = Path(directory)
    config = tokenizer_config(directory)
    order = ["tokenizer.json", "tokenizer.model"]
    if prefer == "tokenizer.model":
        order.reverse()
    for name in order:
        path = directory / name
        if not path.is_file():
            continue
        if name == "tokenizer.json":
            return TokenizerFileEncoder(path, config)
        if not _is_llama_class(config):
            continue
        if prefer == "tokenizer.json" and config.get("legacy") is False:
            converted = converted_llama_tokenizer(path, config)
            return TokenizerFileEncoder(converted, config, llama=True)
        return SentencePieceEncoder(path, config)
    if fallback is not None:
        return TransformersEncoder(fallback)
    raise FileNotFoundError(
        f"{directory}: no tokenizer.json or Llama tokenizer.model to encode with"
    )
