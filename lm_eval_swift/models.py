"""``hf-swift``: lm-eval's ``hf`` model whose ``generate_until`` samples N responses per question and scores each
with SWIFT heads while generating.

Per question the prompt is encoded as HFLM would and prefilled once; each chunk of at most ``batch_size`` samples
decodes from a copy of that KV cache. Sample i draws its uniforms from its own seed (``sample_seed``), so samples do
not depend on batching. The heads' outputs of each fed token are captured by a
:class:`~lm_eval_swift.capture.HeadProjector`; the last sampled token of a row is fed once more to be captured.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from contextlib import nullcontext

import torch
import torch.nn as nn
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lm_eval_swift.capture import HeadProjector
from lm_eval_swift.heads import resolve_heads, swift_reward
from lm_eval_swift.responses import ScoredText, response_tokens

# transformers' GenerationConfig defaults, used where neither the request nor the model's generation_config says
HF_SAMPLING_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None}


class Sampling:
    """How the next token is picked: greedy, or sampled after HF's warpers (temperature, top-k, top-p, min-p)."""

    def __init__(
        self,
        do_sample: bool,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float = 1.0,
        min_p: float | None = None,
    ):
        if do_sample and not temperature > 0:
            raise ValueError(f"do_sample=True needs temperature > 0, got {temperature}")
        self.do_sample = do_sample
        self.warpers = LogitsProcessorList()  # HF's order: temperature, top-k, top-p, min-p
        if do_sample and temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if do_sample and top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if do_sample and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        if do_sample and min_p is not None:
            self.warpers.append(MinPLogitsWarper(min_p))

    @classmethod
    def from_gen_kwargs(cls, kwargs: dict, generation_config) -> Sampling:
        """From normalized lm-eval gen_kwargs (until / max_gen_toks removed) over ``generation_config``, as HF's
        ``generate`` merges them."""
        unknown = set(kwargs) - set(HF_SAMPLING_DEFAULTS)
        if unknown:
            raise ValueError(f"hf-swift does not support generation kwargs {sorted(unknown)}")

        def get(key):
            for value in (kwargs.get(key), getattr(generation_config, key, None), HF_SAMPLING_DEFAULTS[key]):
                if value is not None:
                    return value

        return cls(bool(get("do_sample")), float(get("temperature")), get("top_k"), float(get("top_p")), get("min_p"))

    def pick(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """logits [rows, V] fp32, u [rows] uniforms in [0, 1) -> token ids [rows]: inverse CDF of the warped softmax."""
        if not self.do_sample:
            return logits.argmax(-1)
        cdf = self.warpers(None, logits).softmax(-1).double().cumsum(-1)
        target = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)
        return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def sample_seed(seed: int, context: str, gen_kwargs: dict, i: int) -> int:
    """The seed of sample i of a question: a stable hash of (seed, prompt text, gen kwargs, i)."""
    key = json.dumps([seed, context, gen_kwargs, i], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class StopCheck:
    """``stop(generated_ids) -> bool``: the last token is an EOS id, or a stop string ends in the decoded tail."""

    def __init__(self, tokenizer, until: Sequence[str], eos_token_ids: Collection[int]):
        self.tokenizer, self.eos = tokenizer, set(eos_token_ids)
        self.until = [s for s in until if s]
        # like lm-eval: look back as many tokens as the longest stop string encodes to, plus 2
        self.window = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.until), default=0) + 2

    def __call__(self, ids: Sequence[int]) -> bool:
        if ids[-1] in self.eos:
            return True
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True) if self.until else ""
        return any(s in tail for s in self.until)


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompt_ids: Sequence[int],
    seeds: Sequence[int],
    sampling: Sampling,
    max_new_tokens: int,
    stop: Callable[[Sequence[int]], bool],
    projector: HeadProjector | None = None,
    batch_size: int = 8,
) -> list[tuple[list[int], torch.Tensor | None]]:
    """Sample one continuation per seed: (generated ids, head outputs [T, H, 2] of those tokens, fp32 cpu, or None).

    Rows stop when ``stop(ids)`` or after ``max_new_tokens``. ``projector`` (not active yet) is entered here.
    """
    prompt = torch.tensor([list(prompt_ids)], device=model.device)
    cache = DynamicCache(config=model.config)
    results = []
    with projector if projector is not None else nullcontext():
        with projector.paused() if projector is not None else nullcontext():
            logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        starts = range(0, len(seeds), batch_size)
        for s in starts:
            chunk_cache = cache if s == starts[-1] else copy.deepcopy(cache)
            results += _decode(
                model, chunk_cache, logits, seeds[s : s + batch_size], sampling, max_new_tokens, stop, projector
            )
    return results


def _decode(model, cache, logits, seeds, sampling, max_new_tokens, stop, projector):
    """Decode len(seeds) rows from a prefilled single-row ``cache`` whose next-token logits are ``logits`` [1, V]."""
    rows = len(seeds)
    cache.batch_repeat_interleave(rows)
    logits = logits.expand(rows, -1)
    u = torch.stack(
        [torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )
    live = torch.arange(rows)  # chunk row of each cache row
    generated: list[list[int]] = [[] for _ in range(rows)]
    parts = None  # [rows, T, H, 2]: head outputs at the position where generated token t is the input
    for t in range(max_new_tokens):
        tokens = sampling.pick(logits, u[live, t])
        for r, tok in zip(live.tolist(), tokens.tolist()):
            generated[r].append(tok)
        running = torch.tensor([t + 1 < max_new_tokens and not stop(generated[r]) for r in live.tolist()])
        if projector is None:  # nothing to capture: finished rows are not fed again
            if not running.any():
                break
            live, tokens = _select(cache, running, live, tokens)
            running = running[running]
        logits = model(input_ids=tokens[:, None], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        if projector is not None:
            step = projector.take()[:, 0]  # [live, H, 2]
            if parts is None:
                parts = step.new_zeros(rows, max_new_tokens, *step.shape[1:])
            parts[live.to(parts.device), t] = step
        if not running.any():
            break
        live, logits = _select(cache, running, live, logits)
    return [(ids, None if parts is None else parts[r, : len(ids)].cpu()) for r, ids in enumerate(generated)]


def _select(cache: DynamicCache, keep: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the cache rows (and the given per-row tensors) where ``keep`` [rows] is True."""
    if keep.all():
        return rows
    idx = keep.nonzero()[:, 0]
    cache.batch_select_indices(idx)
    return tuple(x[idx.to(x.device)] for x in rows)


def encode_prompt(lm: HFLM, context: str, max_gen_toks: int) -> list[int]:
    """The prompt ids HFLM's ``generate_until`` feeds for ``context``: same special tokens, same left truncation."""
    max_ctx_len = lm.max_length - max_gen_toks
    if max_ctx_len <= 0:
        raise ValueError(f"max_gen_toks={max_gen_toks} must be less than the model's maximum length {lm.max_length}")
    ids, _ = lm.tok_batch_encode([context], left_truncate_len=max_ctx_len, truncation=lm.truncation)
    return ids[0].tolist()


def eos_token_ids(lm: HFLM) -> set[int]:
    """generation_config's EOS ids plus the tokenizer's."""
    eos = lm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if lm.tokenizer.eos_token_id is not None:
        ids.add(lm.tokenizer.eos_token_id)
    return ids


@register_model("hf-swift")
class HFSwiftLM(HFLM):
    """HFLM plus best-of-N sampling with SWIFT rewards: ``generate_until`` returns :class:`ScoredText` responses.

    ``heads``: head spec as in :func:`~lm_eval_swift.heads.resolve_heads` (default "auto"; None, "none", "off" or ""
    mean no heads: plain sampling). ``seed``: sampling seed. Every other argument is HFLM's.
    """

    def __init__(self, pretrained, heads: str | None = "auto", seed: int = 1234, **kwargs):
        super().__init__(pretrained, **kwargs)
        if self.backend != "causal":
            raise ValueError("hf-swift needs a decoder-only (causal) model")
        if self.think_end_token is not None:
            raise NotImplementedError("hf-swift does not support think_end_token yet")
        self.seed = int(seed)
        self.heads = resolve_heads("none" if heads is None else str(heads), self.model.name_or_path, self.model.config)
        self.projector = HeadProjector(self.model, list(self.heads.values())) if self.heads else None
        if self.projector is not None:
            self.projector.check()

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[ScoredText]:
        questions: dict[tuple[str, str], list[int]] = {}  # identical (context, gen_kwargs) -> request indices
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            questions.setdefault((context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(i)
        batch_size = self._detect_batch_size() if self.batch_size == "auto" else int(self.batch_size)
        results: list[ScoredText | None] = [None] * len(requests)
        autocast = torch.autocast(
            self.device.type, self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None
        )
        bar = tqdm(questions.values(), desc="hf-swift: sampling questions", disable=disable_tqdm or self.rank != 0)
        with autocast:
            for idxs in bar:
                context, gen_kwargs = requests[idxs[0]].args
                for i, response in zip(idxs, self.sample_question(context, gen_kwargs, len(idxs), batch_size)):
                    results[i] = response
                    self.cache_hook.add_partial("generate_until", requests[i].args, response)
        return results

    def sample_question(self, context: str, gen_kwargs: dict, n: int, batch_size: int) -> list[ScoredText]:
        """n scored responses to one prompt (all n the same greedy one when not sampling)."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(
            kwargs.pop("until", None), eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        )
        max_gen_toks = kwargs.pop("max_gen_toks")
        sampling = Sampling.from_gen_kwargs(kwargs, self.model.generation_config)
        prompt = encode_prompt(self, context, max_gen_toks)
        eos = eos_token_ids(self)
        seeds = [sample_seed(self.seed, context, gen_kwargs, i) for i in range(n if sampling.do_sample else 1)]
        samples = sample_continuations(
            self.model,
            prompt,
            seeds,
            sampling,
            max_gen_toks,
            StopCheck(self.tokenizer, until, eos),
            self.projector,
            batch_size,
        )
        responses = []
        for generated, parts in samples:
            kept, text, finish = response_tokens(generated, self.tokenizer, until, eos)
            mask = torch.ones(len(kept), dtype=torch.bool)
            scores = {
                alias: float(swift_reward(parts[: len(kept), h], mask, head.gate))
                for h, (alias, head) in enumerate(self.heads.items())
            }
            responses.append(ScoredText(text, kept, finish, scores, prompt))
        return responses * (n // len(responses))
