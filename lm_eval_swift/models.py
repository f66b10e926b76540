"""``hf-swift``: lm-eval's ``hf`` model whose ``generate_until`` samples N responses per question and scores each
with SWIFT heads while generating.

Per question the prompt is encoded as HFLM would and prefilled once into a preallocated KV cache
(:class:`PreallocatedLayer`: prompt + ``max_gen_toks`` positions, each decode step written in place); each chunk of
at most ``batch_size`` samples decodes from a copy of it, expanded to the chunk's rows. Sample i draws its uniforms
from its own seed (``sample_seed``), so samples do not depend on batching. The heads' outputs of each fed token are
captured by a :class:`~lm_eval_swift.capture.HeadProjector`; the last sampled token of a row is fed once more to be
captured.

Finished samples are kept in a :class:`~lm_eval_swift.sample_cache.SampleCache` (one commit per chunk), so a run
started again after a kill samples only the chunks that were not finished.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import closing, nullcontext

import torch
import torch.nn as nn
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lm_eval_swift.capture import HeadProjector
from lm_eval_swift.distributed import destroy_gloo_group_at_exit, padding_copies, process_share, use_cpu_process_group
from lm_eval_swift.heads import resolve_heads, swift_reward
from lm_eval_swift.responses import ScoredText, response_tokens
from lm_eval_swift.sample_cache import (
    SampleCache,
    head_fingerprint,
    model_fingerprint,
    question_key,
    resolve_path,
)

log = logging.getLogger(__name__)

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
        return cls(**cls.resolve(kwargs, generation_config))

    @staticmethod
    def resolve(kwargs: dict, generation_config) -> dict:
        """The effective ``__init__`` arguments for normalized lm-eval gen_kwargs over ``generation_config``."""
        unknown = set(kwargs) - set(HF_SAMPLING_DEFAULTS)
        if unknown:
            raise ValueError(f"hf-swift does not support generation kwargs {sorted(unknown)}")

        def get(key):
            for value in (kwargs.get(key), getattr(generation_config, key, None), HF_SAMPLING_DEFAULTS[key]):
                if value is not None:
                    return value

        min_p = get("min_p")
        return {
            "do_sample": bool(get("do_sample")),
            "temperature": float(get("temperature")),
            "top_k": get("top_k"),
            "top_p": float(get("top_p")),
            "min_p": None if min_p is None else float(min_p),
        }

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


class PreallocatedLayer(DynamicLayer):
    """A full-attention KV cache layer whose keys and values [B, heads, n, d] are views of buffers sized for the
    whole sample (``max_len`` positions). An append writes in place, where HF's DynamicLayer copies the whole cache
    (``torch.cat``) at every step; attention sees only the n filled positions, so no mask is needed, where HF's
    StaticLayer attends over all ``max_len`` positions through a mask (slow on CPU)."""

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # keys, values [B, heads, max_len, d]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        if n + new > self.max_len:
            raise RuntimeError(f"PreallocatedLayer: {n + new} positions exceed the {self.max_len} allocated")
        if self._buffers is None:
            self._buffers = tuple(
                x.new_empty(*x.shape[:2], self.max_len, x.shape[-1]) for x in (key_states, value_states)
            )
        for buffer, x in zip(self._buffers, (key_states, value_states)):
            buffer[:, :, n : n + new].copy_(x)
        self._view(n + new)
        return self.keys, self.values

    def _view(self, n: int) -> None:
        self.keys, self.values = (buffer[:, :, :n] for buffer in self._buffers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows ``beam_idx`` of the cache, in that order (repeats allowed): copies the filled positions only."""
        n = self.get_seq_length()
        if self._buffers is None or n == 0:
            return
        idx = beam_idx.to(self.keys.device)
        new = tuple(buffer.new_empty(len(idx), *buffer.shape[1:]) for buffer in self._buffers)
        for old, fresh in zip(self._buffers, new):
            fresh[:, :, :n] = old[idx, :, :n]
        self._buffers = new
        self._view(n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.reorder_cache(torch.arange(self.keys.shape[0]).repeat_interleave(repeats))

    def reset(self) -> None:
        self._buffers = None
        super().reset()


def preallocated_cache(config, max_len: int) -> DynamicCache:
    """HF's DynamicCache for ``config`` with each full-attention layer a :class:`PreallocatedLayer` of ``max_len``
    positions (sliding-window and other layers stay HF's)."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(max_len) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.inference_mode()
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
    chunks = [seeds[s : s + batch_size] for s in range(0, len(seeds), batch_size)]
    return [
        row
        for chunk in iter_continuations(model, prompt_ids, chunks, sampling, max_new_tokens, stop, projector)
        for row in chunk
    ]


# inference_mode, not no_grad: no autograd bookkeeping per op (about 12% faster decoding on the demo model)
@torch.inference_mode()
def iter_continuations(
    model: nn.Module,
    prompt_ids: Sequence[int],
    chunks: Sequence[Sequence[int]],
    sampling: Sampling,
    max_new_tokens: int,
    stop: Callable[[Sequence[int]], bool],
    projector: HeadProjector | None = None,
) -> Iterator[list[tuple[list[int], torch.Tensor | None]]]:
    """As :func:`sample_continuations`, one list per chunk of seeds, yielded as soon as that chunk is decoded
    (each chunk is one batch). The prompt is prefilled once, on the first ``next``."""
    if not chunks:
        return
    prompt = torch.tensor([list(prompt_ids)], device=model.device)
    cache = preallocated_cache(model.config, len(prompt_ids) + max_new_tokens)
    with projector if projector is not None else nullcontext():
        with projector.paused() if projector is not None else nullcontext():
            logits = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        for c, seeds in enumerate(chunks):
            chunk_cache = cache if c == len(chunks) - 1 else copy.deepcopy(cache)
            yield _decode(model, chunk_cache, logits, seeds, sampling, max_new_tokens, stop, projector)


def _decode(model, cache, logits, seeds, sampling, max_new_tokens, stop, projector):
    """Decode len(seeds) rows from a prefilled single-row ``cache`` whose next-token logits are ``logits`` [1, V]."""
    rows = len(seeds)
    cache.reorder_cache(torch.zeros(rows, dtype=torch.long))
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
    cache.reorder_cache(idx)
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
    mean no heads: plain sampling). ``seed``: sampling seed. ``sample_cache``: where finished samples are kept so
    that a run started again samples only what is missing (see :mod:`~lm_eval_swift.sample_cache`): a SQLite
    file or a directory for one; "auto" (default): ``hf-swift-samples.sqlite`` in lm-eval's cache folder
    (``$LM_HARNESS_CACHE_PATH``); None or "none": no cache. Every other argument is HFLM's.

    Data parallel: under ``accelerate launch`` with several processes each rank samples the questions lm-eval gives
    it (lm-eval splits documents round-robin by rank). HFLM enables that only with several GPUs; hf-swift also
    does on CPU (gloo) and with several processes on one GPU.
    """

    def __init__(
        self,
        pretrained,
        heads: str | None = "auto",
        seed: int = 1234,
        sample_cache: str | os.PathLike | None = "auto",
        **kwargs,
    ):
        use_cpu_process_group(kwargs.get("device"))
        super().__init__(pretrained, **kwargs)
        if self.backend != "causal":
            raise ValueError("hf-swift needs a decoder-only (causal) model")
        if self.think_end_token is not None:
            raise NotImplementedError("hf-swift does not support think_end_token yet")
        if self.world_size > 1:
            destroy_gloo_group_at_exit()
        self.seed = int(seed)
        self.heads = resolve_heads("none" if heads is None else str(heads), self.model.name_or_path, self.model.config)
        self.projector = HeadProjector(self.model, list(self.heads.values())) if self.heads else None
        if self.projector is not None:
            self.projector.check()
        self.sample_cache = self._open_sample_cache(sample_cache)
        self._fingerprints: dict[str, tuple[object, str]] = {}  # "model" or head alias -> (object, fingerprint)
        self._counts = {"cached": 0, "sampled": 0}  # of the last generate_until

    @property
    def rank(self) -> int:
        """Index of this process: every process of a launch takes a share of the documents, on CPU too (sampling
        here needs no collective op; see :func:`~lm_eval_swift.distributed.process_share`)."""
        return process_share(super().rank, super().world_size, getattr(self, "accelerator", None))[0]

    @property
    def world_size(self) -> int:
        return process_share(super().rank, super().world_size, getattr(self, "accelerator", None))[1]

    def _open_sample_cache(self, spec) -> SampleCache | None:
        path = resolve_path(spec)
        if path is None:
            return None
        try:
            cache = SampleCache(path)
        except (OSError, sqlite3.Error) as e:
            if spec not in ("auto", "default"):
                raise
            log.warning("hf-swift: cannot open the default sample cache %s (%s); running without one", path, e)
            return None
        log.info("hf-swift: sample cache %s", path)
        return cache

    def _cache_identity(self) -> tuple[str, list[tuple[str, str]]]:
        """(model fingerprint, [(alias, head fingerprint)]) of the model and heads in use now; each fingerprint is
        computed once per object."""

        def memo(key: str, obj, compute, *args) -> str:
            held = self._fingerprints.get(key)
            if held is None or held[0] is not obj:
                held = self._fingerprints[key] = (obj, compute(*args))
            return held[1]

        model = memo("model", self.model, model_fingerprint, self.model)
        heads = [(alias, memo(alias, head, head_fingerprint, alias, head)) for alias, head in self.heads.items()]
        return model, heads

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[ScoredText]:
        copies = padding_copies(requests) if self.world_size > 1 else {}
        questions: dict[tuple[str, str], list[int]] = {}  # identical (context, gen_kwargs) -> request indices
        for i, req in enumerate(requests):
            if i in copies:
                continue
            context, gen_kwargs = req.args
            questions.setdefault((context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(i)
        batch_size = self._detect_batch_size() if self.batch_size == "auto" else int(self.batch_size)
        results: list[ScoredText | None] = [None] * len(requests)
        autocast = torch.autocast(
            self.device.type, self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None
        )
        self._counts = {"cached": 0, "sampled": 0}
        bar = tqdm(questions.values(), desc="hf-swift: sampling questions", disable=disable_tqdm or self.rank != 0)
        with autocast:
            for idxs in bar:
                context, gen_kwargs = requests[idxs[0]].args
                for i, response in zip(idxs, self.sample_question(context, gen_kwargs, len(idxs), batch_size)):
                    results[i] = response
                    self.cache_hook.add_partial("generate_until", requests[i].args, response)
        for i, original in copies.items():
            results[i] = results[original]
        if self.sample_cache is not None:
            rank = f" (rank {self.rank})" if self.world_size > 1 else ""
            print(
                f"hf-swift sample cache{rank} {self.sample_cache.path}: {self._counts['cached']} samples cached, "
                f"{self._counts['sampled']} sampled",
                file=sys.stderr,
                flush=True,
            )
        return results

    def sample_question(self, context: str, gen_kwargs: dict, n: int, batch_size: int) -> list[ScoredText]:
        """n scored responses to one prompt (all n the same greedy one when not sampling).

        Samples found in the sample cache are not drawn again; the others are drawn in chunks of ``batch_size``
        (the chunks an uninterrupted run would draw) and each chunk is committed to the cache as it finishes.
        """
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(
            kwargs.pop("until", None), eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        )
        max_gen_toks = kwargs.pop("max_gen_toks")
        settings = Sampling.resolve(kwargs, self.model.generation_config)
        sampling = Sampling(**settings)
        prompt = encode_prompt(self, context, max_gen_toks)
        eos = eos_token_ids(self)
        count = n if sampling.do_sample else 1
        seeds = [sample_seed(self.seed, context, gen_kwargs, i) for i in range(count)]
        responses: dict[int, ScoredText] = {}
        question = description = None
        if self.sample_cache is not None:
            model_id, head_ids = self._cache_identity()
            question, description = question_key(
                model=model_id,
                heads=head_ids,
                context=context,
                gen_kwargs=gen_kwargs,
                prompt_token_ids=prompt,
                settings={
                    **settings,
                    "until": until,
                    "max_gen_toks": max_gen_toks,
                    "eos": sorted(eos),
                    "autocast": str(self.mixed_precision_dtype),  # mixed_precision_dtype changes the numbers
                },
                seed=self.seed,
            )
            responses = self.sample_cache.get(question, range(count))
        chunks = [
            missing
            for s in range(0, count, batch_size)
            if (missing := [i for i in range(s, min(s + batch_size, count)) if i not in responses])
        ]
        self._counts["cached"] += len(responses)
        decoded = iter_continuations(
            self.model,
            prompt,
            [[seeds[i] for i in chunk] for chunk in chunks],
            sampling,
            max_gen_toks,
            StopCheck(self.tokenizer, until, eos),
            self.projector,
        )
        with closing(decoded):  # leaves the projector's hooks now, not when the generator is collected
            for chunk, samples in zip(chunks, decoded):
                fresh = {i: self._scored(ids, parts, until, eos, prompt) for i, (ids, parts) in zip(chunk, samples)}
                if self.sample_cache is not None:
                    self.sample_cache.put(question, description, fresh, {i: seeds[i] for i in chunk})
                responses.update(fresh)
                self._counts["sampled"] += len(fresh)
        ordered = [responses[i] for i in range(count)]
        return ordered * (n // count)

    def _scored(self, generated, parts, until, eos, prompt) -> ScoredText:
        kept, text, finish = response_tokens(generated, self.tokenizer, until, eos)
        mask = torch.ones(len(kept), dtype=torch.bool)
        scores = {
            alias: float(swift_reward(parts[: len(kept), h], mask, head.gate))
            for h, (alias, head) in enumerate(self.heads.items())
        }
        return ScoredText(text, kept, finish, scores, prompt)
