"""``hf-swift``: lm-eval's ``hf`` model whose ``generate_until`` samples N responses per question and scores each
with SWIFT heads and the confidence scorers while generating.

Packing and continuous batching (:func:`~lm_eval_swift.decoding.decode`). All the samples of a ``generate_until`` call are rows waiting
for a place in one decode batch of at most ``batch_size`` rows (B): with N samples per question, B // N questions
decode together (B=64, N=8: 8 questions). A question's prompt is encoded as HFLM would and prefilled once, a
single-row forward, when its first row gets a place; that KV cache is copied into the rows of its samples. Rows of
different prompt lengths share the batch in a :class:`~lm_eval_swift.decoding.cache.PackedCache`: per-row positions in preallocated buffers,
each step written in place at each row's own length, attention under a per-row mask (sliding-window layers too).
A row leaves the batch as soon as it finishes (EOS, stop string, ``max_gen_toks``) and the next waiting row takes
its place, so no step decodes finished rows. ``packing=False`` runs the same decoder one question at a time (its
rows still refill the batch when N > B). The KV cache holds at most B rows of the longest prompt +
``max_gen_toks`` positions.

Sample i of a question draws its uniforms from its own seed (``sample_seed``), so samples do not depend on the
batch size or on which rows share a batch (up to the last bits of floating point, which can flip a token only when
a uniform falls within about 1e-7 of a CDF boundary). The heads' outputs of each fed token are captured by a
:class:`~lm_eval_swift.swift.capture.HeadProjector`; the last sampled token of a row is fed once more to be captured.
The confidence scorers (:mod:`lm_eval_swift.confidence`) read the raw logits each token is drawn from, which the
sampler has anyway: a running state per row, no extra forward pass.

Finished samples are kept in a :class:`~lm_eval_swift.harness.sample_cache.SampleCache` (one commit per question after
each decode step in which some of its samples finished), so a run started again after a kill samples only what
was not finished.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from lm_eval_swift.bon.samples import Sample, response_tokens
from lm_eval_swift.confidence import ConfidenceParams, parse_confidence
from lm_eval_swift.decoding import (
    Finished,
    Job,
    PackedCache,
    Sampling,
    StopCheck,
    decode,
    sample_seed,
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
from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import resolve_heads, swift_reward


log = logging.getLogger(__name__)


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
    responses: dict[int, Sample] = field(
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
    """HFLM plus best-of-N sampling with SWIFT rewards: ``generate_until`` returns :class:`Sample` responses.

    ``heads``: head spec as in :func:`~lm_eval_swift.swift.heads.resolve_heads` (default "auto"; None, "none", "off" or ""
    mean no heads: plain sampling). ``confidence``: the confidence scorers captured while sampling: "all",
    names comma separated, or "none" (default). ``seed``: sampling seed. ``sample_cache``: where finished samples are kept so
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
        confidence: str | None = "none",
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
        self.confidence = parse_confidence(confidence)
        self.confidence_params = ConfidenceParams() if self.confidence else None
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

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[Sample]:
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
                    self.model,
                    [q.job for q in group],
                    batch_size,
                    self.projector,
                    self.confidence_params,
                )
                # closing: leaves the projector's hooks now, not when the generator is collected
                with closing(decoded):
                    for finished in decoded:
                        self._store(group, finished, bar)
        results: list[Sample | None] = [None] * len(requests)
        for q in questions:
            ordered = [q.responses[i] for i in range(q.count)]
            for i, response in zip(
                q.requests, ordered * (len(q.requests) // q.count), strict=True
            ):
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
                    # the confidence scores stored with the samples (none: the key is as before they existed)
                    **(
                        {
                            "confidence": [
                                list(self.confidence),
                                repr(self.confidence_params),
                            ]
                        }
                        if self.confidence
                        else {}
                    ),
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
        fresh: dict[int, dict[int, Sample]] = {}
        for f in finished:
            q = questions[f.job]
            fresh.setdefault(f.job, {})[q.missing[f.sample]] = self._scored(
                f, q.until, q.eos, q.prompt
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

    def _scored(self, f: Finished, until, eos, prompt) -> Sample:
        """The response of a finished sample with its heads' rewards and confidence scores (of its kept tokens)."""
        kept, text, finish = response_tokens(f.ids, self.tokenizer, until, eos)
        mask = torch.ones(len(kept), dtype=torch.bool)
        scores = {
            alias: float(swift_reward(f.parts[: len(kept), h], mask, head.gate))
            for h, (alias, head) in enumerate(self.heads.items())
        }
        if f.confidence is not None:
            captured = f.confidence.finish(0, len(kept))
            if captured is None:
                log.warning("hf-swift: a stop string cut more than %d tokens; that sample has no confidence "
                            "scores", f.confidence.lag)  # fmt: skip
            scores.update(
                {n: v for n, v in (captured or {}).items() if n in self.confidence}
            )
        return Sample(text, kept, finish, scores, prompt)
