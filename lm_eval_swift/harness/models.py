"""``hf-swift``: lm-eval's ``hf`` model whose ``generate_until`` samples N responses per question and scores each
with SWIFT heads while generating.

Packing and continuous batching (:func:`decode`). All the samples of a ``generate_until`` call are rows waiting
for a place in one decode batch of at most ``batch_size`` rows (B): with N samples per question, B // N questions
decode together (B=64, N=8: 8 questions). A question's prompt is encoded as HFLM would and prefilled once, a
single-row forward, when its first row gets a place; that KV cache is copied into the rows of its samples. Rows of
different prompt lengths share the batch in a :class:`PackedCache`: per-row positions in preallocated buffers,
each step written in place at each row's own length, attention under a per-row mask (sliding-window layers too).
A row leaves the batch as soon as it finishes (EOS, stop string, ``max_gen_toks``) and the next waiting row takes
its place, so no step decodes finished rows. ``packing=False`` runs the same decoder one question at a time (its
rows still refill the batch when N > B). The KV cache holds at most B rows of the longest prompt +
``max_gen_toks`` positions.

Sample i of a question draws its uniforms from its own seed (``sample_seed``), so samples do not depend on the
batch size or on which rows share a batch (up to the last bits of floating point, which can flip a token only when
a uniform falls within about 1e-7 of a CDF boundary). The heads' outputs of each fed token are captured by a
:class:`~lm_eval_swift.swift.capture.HeadProjector`; the last sampled token of a row is fed once more to be captured.

Finished samples are kept in a :class:`~lm_eval_swift.harness.sample_cache.SampleCache` (one commit per question after
each decode step in which some of its samples finished), so a run started again after a kill samples only what
was not finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lm_eval_swift.harness.batching import decode_rows
from lm_eval_swift.harness.distributed import (
    destroy_gloo_group_at_exit,
    padding_copies,
    process_share,
    use_cpu_process_group,
)
from lm_eval_swift.harness.sample_cache import (
    SampleCache,
    head_fingerprint,
    model_fingerprint,
    question_key,
    resolve_path,
)
from lm_eval_swift.responses import ScoredText, response_tokens
from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import resolve_heads, swift_reward


log = logging.getLogger(__name__)

# transformers' GenerationConfig defaults, used where neither the request nor the model's generation_config says
HF_SAMPLING_DEFAULTS = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
}


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
        self.warpers = (
            LogitsProcessorList()
        )  # HF's order: temperature, top-k, top-p, min-p
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
            raise ValueError(
                f"hf-swift does not support generation kwargs {sorted(unknown)}"
            )

        def get(key):
            for value in (
                kwargs.get(key),
                getattr(generation_config, key, None),
                HF_SAMPLING_DEFAULTS[key],
            ):
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
        return (
            torch.searchsorted(cdf, target, right=True)
            .squeeze(-1)
            .clamp_max(cdf.shape[-1] - 1)
        )


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
        self.window = (
            max(
                (
                    len(tokenizer.encode(s, add_special_tokens=False))
                    for s in self.until
                ),
                default=0,
            )
            + 2
        )

    def __call__(self, ids: Sequence[int]) -> bool:
        if ids[-1] in self.eos:
            return True
        tail = (
            self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
            if self.until
            else ""
        )
        return any(s in tail for s in self.until)


class PackedCache(Cache):
    """The KV cache of a packed decode batch: rows of different sequences (different prompts, lengths, questions).

    Per layer, keys and values [rows, kv_heads, capacity, head_dim] are preallocated (zeros, so that masked
    positions hold finite numbers); row r holds its own sequence in positions [0, lengths[r]). A decode step
    (:meth:`step_inputs`, the forward, :meth:`advance`) writes each row's new key and value at that row's own
    length, in place, and attention reads positions [0, longest + 1) of the live rows under a 4D mask that hides
    each row's unused positions and, on sliding-window layers, the positions outside the window. Every layer keeps
    the whole sequence (a sliding-window layer's window is a mask, not a smaller buffer). Rows are admitted from a
    single-row prefill (:meth:`admit`) and finished rows are removed by moving the last rows into their place
    (:meth:`keep`), so the live rows are always rows [0, live).
    """

    def __init__(self, model: nn.Module, rows: int):
        super().__init__(layers=[])
        self.windows: list[
            int | None
        ] = []  # per layer: sliding window, or None (full attention)
        for layer in DynamicCache(config=model.config).layers:
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
                raise NotImplementedError(
                    f"hf-swift decodes full-attention and sliding-window layers only, not {type(layer).__name__}"
                )
            self.windows.append(getattr(layer, "sliding_window", None))
        self.attn_implementation = model.config._attn_implementation
        if self.attn_implementation not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"hf-swift needs attn_implementation 'sdpa' (the default) or 'eager' (its rows need a per-row "
                f"attention mask), not {self.attn_implementation!r}"
            )
        self.layer_types = getattr(model.config, "layer_types", None)
        self.rows, self.capacity, self.live = rows, 0, 0
        self.lengths = torch.zeros(
            rows, dtype=torch.long
        )  # filled positions per row (cpu)
        self.buffers: list[
            tuple[torch.Tensor, torch.Tensor]
        ] = []  # per layer: keys, values
        self._write: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (rows, positions) of the step's new entries
        )
        self._span = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.lengths[: self.live].max()) if self.live else 0

    def _reserve(self, length: int) -> None:
        """Grow every buffer to hold ``length`` positions (copying the live rows' filled positions)."""
        if length <= self.capacity:
            return
        used = self.get_seq_length()
        for i, pair in enumerate(self.buffers):
            grown = tuple(b.new_zeros(*b.shape[:2], length, b.shape[-1]) for b in pair)
            for new, old in zip(grown, pair):
                new[: self.live, :, :used] = old[: self.live, :, :used]
            self.buffers[i] = grown
        self.capacity = length

    def admit(self, prefill: DynamicCache, k: int, length: int) -> None:
        """Append k rows, each a copy of the single-row ``prefill`` (a whole prompt of P positions; a sliding-window
        layer holds only its last positions, the others are never attended again); ``length``: positions the rows
        will need (prompt + new tokens)."""
        if self.live + k > self.rows:
            raise RuntimeError(
                f"PackedCache: {self.live + k} rows exceed the {self.rows} allocated"
            )
        if not self.buffers:
            self.buffers = [
                tuple(
                    x.new_zeros(self.rows, x.shape[1], 0, x.shape[-1])
                    for x in (layer.keys, layer.values)
                )
                for layer in prefill.layers
            ]
        self._reserve(length)
        n = prefill.get_seq_length()
        rows = slice(self.live, self.live + k)
        for (keys, values), layer in zip(self.buffers, prefill.layers):
            kept = layer.keys.shape[-2]
            keys[rows, :, n - kept : n] = layer.keys
            values[rows, :, n - kept : n] = layer.values
        self.lengths[rows] = n
        self.live += k

    def keep(self, alive: Sequence[bool]) -> list[int]:
        """Drop the live rows where ``alive`` is False: the last live rows move into their places. Returns the
        order: new row i was row order[i]."""
        n = sum(alive)
        holes = [r for r in range(n) if not alive[r]]
        movers = [r for r in range(n, len(alive)) if alive[r]]
        order = list(range(n))
        if holes:
            for h, m in zip(holes, movers):
                order[h] = m
            span = int(self.lengths[movers].max())
            dst, src = torch.tensor(holes), torch.tensor(movers)
            for pair in self.buffers:
                for b in pair:
                    b[dst.to(b.device), :, :span] = b[src.to(b.device), :, :span]
            self.lengths[dst] = self.lengths[src]
        self.live = n
        return order

    def step_inputs(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        """position_ids [live, 1] and the attention mask(s) [live, 1, 1, span] of a one-token decode step of every
        live row: one mask, or a dict by layer type when full and sliding-window layers are mixed."""
        device = self.buffers[0][0].device
        pos = self.lengths[: self.live].to(device)
        self._span = int(self.lengths[: self.live].max()) + 1
        if self._span > self.capacity:
            raise RuntimeError(
                f"PackedCache: {self._span} positions exceed the {self.capacity} reserved"
            )
        self._write = (torch.arange(self.live, device=device), pos)
        kv = torch.arange(self._span, device=device)
        seen = kv <= pos[:, None]
        masks = {
            w: seen if w is None else seen & (kv > pos[:, None] - w)
            for w in set(self.windows)
        }
        masks = {w: self._attention_mask(m[:, None, None]) for w, m in masks.items()}
        if len(masks) == 1:
            return pos[:, None], next(iter(masks.values()))
        if self.layer_types is None:
            raise NotImplementedError(
                "hf-swift: mixed sliding-window and full layers need config.layer_types"
            )
        by_type = {}
        for kind, w in zip(self.layer_types, self.windows):
            by_type[kind] = masks[w]
        return pos[:, None], by_type

    def _attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.attn_implementation == "sdpa":
            return allowed
        dtype = self.buffers[0][0].dtype
        return torch.zeros(
            allowed.shape, dtype=dtype, device=allowed.device
        ).masked_fill(~allowed, torch.finfo(dtype).min)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write the step's keys/values [live, kv_heads, 1, d] at each row's length; return [live, kv_heads, span, d]."""
        if key_states.shape[-2] != 1 or self._write is None:
            raise RuntimeError(
                "PackedCache takes one-token decode steps after step_inputs()"
            )
        keys, values = self.buffers[layer_idx]
        rows, pos = (x.to(keys.device) for x in self._write)
        keys[rows, :, pos] = key_states[:, :, 0]
        values[rows, :, pos] = value_states[:, :, 0]
        return keys[: self.live, :, : self._span], values[: self.live, :, : self._span]

    def advance(self) -> None:
        """After the step's forward: every live row is one position longer."""
        self.lengths[: self.live] += 1
        self._write = None


@dataclass
class Job:
    """The samples to draw for one prompt: one per seed, each stopping when ``stop(ids)`` or after
    ``max_new_tokens``."""

    prompt_ids: Sequence[int]
    seeds: Sequence[int]
    sampling: Sampling
    max_new_tokens: int
    stop: Callable[[Sequence[int]], bool]


class Finished(NamedTuple):
    """A finished sample: ``jobs[job].seeds[sample]``'s generated ids and head outputs [T, H, 2] (fp32 cpu) of
    those tokens (None without a projector)."""

    job: int
    sample: int
    ids: list[int]
    parts: torch.Tensor | None


# inference_mode, not no_grad: no autograd bookkeeping per op (about 12% faster decoding on the demo model)
@torch.inference_mode()
def decode(
    model: nn.Module,
    jobs: Sequence[Job],
    batch_size: int,
    projector: HeadProjector | None = None,
) -> Iterator[list[Finished]]:
    """Draw every job's samples, at most ``batch_size`` rows per decode step, packed and continuously batched.

    Jobs are admitted in order: a job's prompt is prefilled once (a single-row forward) when the first of its rows
    gets a free place in the batch, and that prefill is copied into as many rows as there are free places; the
    rest of its rows wait for the next free places. A row leaves the batch as soon as it finishes (EOS, stop
    string, ``max_new_tokens``), and its place is taken by the next waiting row, of this job or the next ones, so
    the batch stays full while rows are waiting. Rows of different prompt lengths share each step
    (:class:`PackedCache`). Sample i draws its uniforms from its own seed, so its tokens do not depend on the
    batch it shares. With ``projector`` (entered here) the last sampled token of a row is fed once more to be
    captured. Yields, after each step in which rows finished, those rows.
    """
    total = sum(len(job.seeds) for job in jobs)
    if total == 0:
        return
    rows = min(batch_size, total)
    cache = PackedCache(model, rows)
    t_max = max(job.max_new_tokens for job in jobs)
    u = torch.zeros(
        rows, t_max, dtype=torch.float64
    )  # per row: its seed's uniforms, one per new token
    parts = None  # [rows, t_max, H, 2]: head outputs at the position where generated token t is the input
    owner: list[tuple[int, int]] = []  # per live row: (job, sample)
    generated: list[list[int]] = []
    logits = None  # [live, V] fp32: next-token logits of the live rows
    waiting = iter(range(len(jobs)))
    current = None  # [job, prefilled cache, its logits [1, V], next sample] of the job being admitted

    def admit() -> None:
        nonlocal current, logits
        while cache.live < rows:
            if current is None:
                j = next((j for j in waiting if jobs[j].seeds), None)
                if j is None:
                    return
                prefill = DynamicCache(config=model.config)
                prompt = torch.tensor([list(jobs[j].prompt_ids)], device=model.device)
                with projector.paused() if projector is not None else nullcontext():
                    out = model(
                        input_ids=prompt,
                        cache=prefill,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                current = [j, prefill, out.logits[:, -1].float(), 0]
            j, prefill, first, s = current
            job = jobs[j]
            k = min(rows - cache.live, len(job.seeds) - s)
            r0 = cache.live
            cache.admit(prefill, k, len(job.prompt_ids) + job.max_new_tokens)
            for i in range(s, s + k):
                seed = torch.Generator().manual_seed(job.seeds[i])
                u[r0 + i - s, : job.max_new_tokens] = torch.rand(
                    job.max_new_tokens, generator=seed, dtype=torch.float64
                )
                owner.append((j, i))
                generated.append([])
            logits = (
                first.expand(k, -1)
                if logits is None
                else torch.cat([logits, first.expand(k, -1)])
            )
            current = None if s + k == len(job.seeds) else [j, prefill, first, s + k]

    def pick() -> torch.Tensor:
        live = cache.live
        uniforms = u[torch.arange(live), torch.tensor([len(g) for g in generated])]
        samplers: dict[int, tuple[Sampling, list[int]]] = {}
        for r, (j, _) in enumerate(owner):
            samplers.setdefault(id(jobs[j].sampling), (jobs[j].sampling, []))[1].append(
                r
            )
        if len(samplers) == 1:
            return next(iter(samplers.values()))[0].pick(logits, uniforms)
        tokens = torch.empty(live, dtype=torch.long, device=logits.device)
        for sampling, idx in samplers.values():
            at = torch.tensor(idx, device=logits.device)
            tokens[at] = sampling.pick(logits[at], uniforms[idx])
        return tokens

    def drop(alive: list[bool]) -> tuple[list[Finished], list[int]]:
        """Remove the finished rows -> (them, order of the rows kept)."""
        done = [
            Finished(
                *owner[r],
                generated[r],
                None
                if parts is None
                else parts[r, : len(generated[r])].to("cpu", copy=True),
            )
            for r, a in enumerate(alive)
            if not a
        ]
        order = cache.keep(alive)
        moved = [(i, o) for i, o in enumerate(order) if i != o]
        if moved:
            dst, src = (torch.tensor(x) for x in zip(*moved))
            u[dst] = u[src]
            if parts is not None:
                parts[dst.to(parts.device)] = parts[src.to(parts.device)]
        owner[:], generated[:] = (
            [owner[o] for o in order],
            [generated[o] for o in order],
        )
        return done, order

    with projector if projector is not None else nullcontext():
        while True:
            admit()
            if cache.live == 0:
                return
            tokens = pick()
            for g, tok in zip(generated, tokens.tolist()):
                g.append(tok)
            alive = [
                len(g) < jobs[j].max_new_tokens and not jobs[j].stop(g)
                for g, (j, _) in zip(generated, owner)
            ]
            done: list[Finished] = []
            if projector is None:  # nothing to capture: finished rows are not fed again
                done, order = drop(alive)
                tokens, alive = (
                    tokens[torch.tensor(order, dtype=torch.long, device=tokens.device)],
                    [True] * cache.live,
                )
            if cache.live:
                position_ids, mask = cache.step_inputs()
                out = model(
                    input_ids=tokens[:, None],
                    position_ids=position_ids,
                    attention_mask=mask,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache.advance()
                logits = out.logits[:, -1].float()
                if projector is not None:
                    step = projector.take()[:, 0]  # [live, H, 2]
                    if parts is None:
                        parts = step.new_zeros(rows, t_max, *step.shape[1:])
                    at = torch.tensor(
                        [len(g) - 1 for g in generated], device=parts.device
                    )
                    parts[torch.arange(cache.live, device=parts.device), at] = step
            if not all(alive):
                done, order = drop(alive)
                logits = logits[
                    torch.tensor(order, dtype=torch.long, device=logits.device)
                ]
            elif cache.live == 0:
                logits = None
            if done:
                yield done


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
    """Sample one continuation of one prompt per seed: (generated ids, head outputs [T, H, 2] of those tokens, fp32
    cpu, or None), in seed order; see :func:`decode`."""
    rows: list[tuple[list[int], torch.Tensor | None] | None] = [None] * len(seeds)
    for finished in decode(
        model,
        [Job(prompt_ids, seeds, sampling, max_new_tokens, stop)],
        batch_size,
        projector,
    ):
        for f in finished:
            rows[f.sample] = (f.ids, f.parts)
    return rows


def encode_prompt(lm: HFLM, context: str, max_gen_toks: int) -> list[int]:
    """The prompt ids HFLM's ``generate_until`` feeds for ``context``: same special tokens, same left truncation."""
    max_ctx_len = lm.max_length - max_gen_toks
    if max_ctx_len <= 0:
        raise ValueError(
            f"max_gen_toks={max_gen_toks} must be less than the model's maximum length {lm.max_length}"
        )
    ids, _ = lm.tok_batch_encode(
        [context], left_truncate_len=max_ctx_len, truncation=lm.truncation
    )
    return ids[0].tolist()


def eos_token_ids(lm: HFLM) -> set[int]:
    """generation_config's EOS ids plus the tokenizer's."""
    eos = lm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if lm.tokenizer.eos_token_id is not None:
        ids.add(lm.tokenizer.eos_token_id)
    return ids


@dataclass
class _Question:
    """One question of a ``generate_until`` call: its requests, what it samples, and its responses so far."""

    requests: list[int]  # indices of its (identical) requests
    count: int  # distinct samples: n, or 1 when not sampling
    prompt: list[int]
    until: list[str]
    eos: set[int]
    seeds: list[int]  # of samples 0..count-1
    responses: dict[int, ScoredText] = field(
        default_factory=dict
    )  # sample index -> response
    missing: list[int] = field(
        default_factory=list
    )  # sample indices to draw, in job.seeds' order
    job: Job | None = None
    key: str | None = None  # in the sample cache
    description: str | None = None


@register_model("hf-swift")
class HFSwiftLM(HFLM):
    """HFLM plus best-of-N sampling with SWIFT rewards: ``generate_until`` returns :class:`ScoredText` responses.

    ``heads``: head spec as in :func:`~lm_eval_swift.swift.heads.resolve_heads` (default "auto"; None, "none", "off" or ""
    mean no heads: plain sampling). ``seed``: sampling seed. ``sample_cache``: where finished samples are kept so
    that a run started again samples only what is missing (see :mod:`~lm_eval_swift.harness.sample_cache`): a SQLite
    file or a directory for one; "auto" (default): ``hf-swift-samples.sqlite`` in the user's cache folder
    (``$XDG_CACHE_HOME/lm-eval-swift/``, default ``~/.cache/lm-eval-swift/``); None or "none": no cache.
    ``packing`` (default true): the samples of all the questions of a call share the decode batches
    (``batch_size`` rows, see :func:`decode`); false: one question at a time. Every other argument is HFLM's.

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
        packing: bool = True,
        **kwargs,
    ):
        if str(packing).lower() not in ("true", "false", "1", "0"):
            raise ValueError(
                f"hf-swift: packing must be true or false, got {packing!r}"
            )
        use_cpu_process_group(kwargs.get("device"))
        super().__init__(pretrained, **kwargs)
        if self.backend != "causal":
            raise ValueError("hf-swift needs a decoder-only (causal) model")
        if self.think_end_token is not None:
            raise NotImplementedError("hf-swift does not support think_end_token yet")
        if self.world_size > 1:
            destroy_gloo_group_at_exit()
        self.seed = int(seed)
        self.packing = str(packing).lower() in ("true", "1")
        PackedCache(
            self.model, 1
        )  # refuses, now, a model whose layers or attention cannot be decoded in rows
        self.heads_spec = "none" if heads is None else str(heads)
        self.heads = resolve_heads(
            self.heads_spec,
            self.model.name_or_path,
            self.model.config,
            model=self.model,
        )
        self.projector = (
            HeadProjector(self.model, list(self.heads.values())) if self.heads else None
        )
        if self.projector is not None:
            self.projector.check()
        self.sample_cache = self._open_sample_cache(sample_cache)
        self._fingerprints: dict[
            str, tuple[object, str]
        ] = {}  # "model" or head alias -> (object, fingerprint)
        self._counts = {"cached": 0, "sampled": 0}  # of the last generate_until

    @property
    def rank(self) -> int:
        """Index of this process: every process of a launch takes a share of the documents, on CPU too (sampling
        here needs no collective op; see :func:`~lm_eval_swift.harness.distributed.process_share`)."""
        return process_share(
            super().rank, super().world_size, getattr(self, "accelerator", None)
        )[0]

    @property
    def world_size(self) -> int:
        return process_share(
            super().rank, super().world_size, getattr(self, "accelerator", None)
        )[1]

    def _open_sample_cache(self, spec) -> SampleCache | None:
        path = resolve_path(spec)
        if path is None:
            return None
        try:
            cache = SampleCache(path)
        except (OSError, sqlite3.Error) as e:
            if spec not in ("auto", "default"):
                raise
            log.warning(
                "hf-swift: cannot open the default sample cache %s (%s); running without one",
                path,
                e,
            )
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
        heads = [
            (alias, memo(alias, head, head_fingerprint, alias, head))
            for alias, head in self.heads.items()
        ]
        return model, heads

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[ScoredText]:
        copies = padding_copies(requests) if self.world_size > 1 else {}
        grouped: dict[
            tuple[str, str], list[int]
        ] = {}  # identical (context, gen_kwargs) -> request indices
        for i, req in enumerate(requests):
            if i in copies:
                continue
            context, gen_kwargs = req.args
            grouped.setdefault(
                (context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []
            ).append(i)
        self._counts = {"cached": 0, "sampled": 0}
        samplers: dict[str, Sampling] = {}
        questions = [
            self._plan(*requests[idxs[0]].args, idxs, samplers)
            for idxs in grouped.values()
        ]
        batch_size = decode_rows(
            self.batch_size,
            self.model,
            self.max_length,
            self.max_batch_size or 64,
            sum(len(q.job.seeds) for q in questions),
        )  # lm-eval's default 1 is read as auto: never one sample at a time by accident
        autocast = torch.autocast(
            self.device.type,
            self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )
        bar = tqdm(
            total=len(questions),
            desc="hf-swift: sampling questions",
            disable=disable_tqdm or self.rank != 0,
        )
        # the bar closes before an error or Ctrl-C propagates, so nothing is printed after its message
        with bar, autocast:
            bar.update(sum(not q.job.seeds for q in questions))
            for group in [questions] if self.packing else [[q] for q in questions]:
                decoded = decode(
                    self.model, [q.job for q in group], batch_size, self.projector
                )
                # closing: leaves the projector's hooks now, not when the generator is collected
                with closing(decoded):
                    for finished in decoded:
                        self._store(group, finished, bar)
        results: list[ScoredText | None] = [None] * len(requests)
        for q in questions:
            ordered = [q.responses[i] for i in range(q.count)]
            for i, response in zip(q.requests, ordered * (len(q.requests) // q.count)):
                results[i] = response
                self.cache_hook.add_partial(
                    "generate_until", requests[i].args, response
                )
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

    def _plan(
        self,
        context: str,
        gen_kwargs: dict,
        requests: list[int],
        samplers: dict[str, Sampling],
    ) -> _Question:
        """What to sample for one question (its ``requests``: n identical requests): n samples, or one greedy
        response for all n when not sampling; those found in the sample cache are not drawn again. ``samplers``:
        one :class:`Sampling` per distinct setting, shared by the questions that use it."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(
            kwargs.pop("until", None),
            eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False),
        )
        max_gen_toks = kwargs.pop("max_gen_toks")
        settings = Sampling.resolve(kwargs, self.model.generation_config)
        sampling = samplers.setdefault(
            json.dumps(settings, sort_keys=True), Sampling(**settings)
        )
        prompt = encode_prompt(self, context, max_gen_toks)
        eos = eos_token_ids(self)
        count = len(requests) if sampling.do_sample else 1
        seeds = [sample_seed(self.seed, context, gen_kwargs, i) for i in range(count)]
        q = _Question(requests, count, prompt, until, eos, seeds)
        if self.sample_cache is not None:
            model_id, head_ids = self._cache_identity()
            q.key, q.description = question_key(
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
                    "autocast": str(
                        self.mixed_precision_dtype
                    ),  # mixed_precision_dtype changes the numbers
                },
                seed=self.seed,
            )
            q.responses = self.sample_cache.get(q.key, range(count))
        q.missing = [i for i in range(count) if i not in q.responses]
        q.job = Job(
            prompt,
            [seeds[i] for i in q.missing],
            sampling,
            max_gen_toks,
            StopCheck(self.tokenizer, until, eos),
        )
        self._counts["cached"] += len(q.responses)
        return q

    def _store(
        self, questions: Sequence[_Question], finished: Sequence[Finished], bar: tqdm
    ) -> None:
        """Score the samples that finished in one decode step, and commit each question's to the sample cache."""
        fresh: dict[int, dict[int, ScoredText]] = {}
        for f in finished:
            q = questions[f.job]
            fresh.setdefault(f.job, {})[q.missing[f.sample]] = self._scored(
                f.ids, f.parts, q.until, q.eos, q.prompt
            )
        for j, samples in fresh.items():
            q = questions[j]
            if self.sample_cache is not None:
                self.sample_cache.put(
                    q.key, q.description, samples, {i: q.seeds[i] for i in samples}
                )
            q.responses.update(samples)
            self._counts["sampled"] += len(samples)
            bar.update(int(len(q.responses) == q.count))

    def _scored(self, generated, parts, until, eos, prompt) -> ScoredText:
        kept, text, finish = response_tokens(generated, self.tokenizer, until, eos)
        mask = torch.ones(len(kept), dtype=torch.bool)
        scores = {
            alias: float(swift_reward(parts[: len(kept), h], mask, head.gate))
            for h, (alias, head) in enumerate(self.heads.items())
        }
        return ScoredText(text, kept, finish, scores, prompt)
