"""Small random causal LMs and a character-level tokenizer, built locally (no hub).

Used by the tests, the benchmarks and the demo: a checkpoint directory made here loads with
``from_pretrained`` exactly like a real one, chat template included.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHARSET = string.printable + "π√°·×÷≤≥"

CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def char_tokenizer(charset: str = CHARSET) -> PreTrainedTokenizerFast:
    """One token per character (decode(encode(s)) == s for s over ``charset``), with a chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in dict.fromkeys(charset):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(.|\\n)"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def random_model(
    arch: str = "llama",
    *,
    tokenizer: PreTrainedTokenizerFast,
    num_hidden_layers: int = 2,
    hidden_size: int = 32,
    intermediate_size: int | None = None,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> torch.nn.Module:
    """A randomly initialised ``arch`` causal LM for ``tokenizer`` (its vocabulary and special tokens), seeded.
    ``config_overrides`` go to the config class as they are (e.g. ``sliding_window=8`` for Mistral)."""
    config = CONFIGS[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **config_overrides,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def random_causal_lm(
    path: str | Path,
    arch: str = "llama",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **model_args,
) -> Path:
    """Save :func:`random_model` (``model_args``: its keyword arguments) plus the tokenizer (default
    :func:`char_tokenizer`) to ``path``; returns the path."""
    tokenizer = tokenizer or char_tokenizer()
    path = Path(path)
    random_model(arch, tokenizer=tokenizer, **model_args).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
