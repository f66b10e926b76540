"""Train a SWIFT head on graded rollouts: a linear head over a frozen base model's features, labels = correctness.

    lm-eval-swift train rollouts_gsm8k.jsonl --base-model Qwen/Qwen2.5-1.5B-Instruct --out heads/qwen-gsm8k

Every response of the rollouts files is an example, labelled by the grade it carries (``Response.correct``, the
grader of the evaluation). Its features are those of its response tokens (:mod:`lm_eval_swift.swift.features`), taken
from the rollout's token ids or, when absent, by the response-token rule from its text. A seeded 20% of the
QUESTIONS is held out for validation (a question never has responses on both sides).

Losses: ``bce`` (the paper's): BCE-with-logits of R against correctness; ``hinge``: max(0, 1 - (R_c - R_i)) and
``dpo``: -log sigmoid(R_c - R_i) over every (correct c, incorrect i) pair of one question within a step. A step is
a batch of at most ``batch_size`` responses made of whole questions (a question with more responses is cut into
several steps). AdamW; after each epoch the validation metrics decide the best epoch (``early_stop``: validation
loss, or within-question AUROC) and training stops after ``patience`` epochs without improvement. The saved head is
the best epoch's.

Each epoch ends with a checkpoint (``out_dir/checkpoints/last.pt``: head, optimizer, shuffling RNG, best so far); a
run started again with the same arguments resumes from it and ends with the same head.

The settings are one :class:`TrainConfig`. :class:`TrainingSetup` holds what every fit on the same rollouts shares
(the base model, the responses and labels, their features) and :func:`fit` trains one head on some of the questions:
:func:`train_head` is one fit on the seeded split, :mod:`lm_eval_swift.swift.curve` (``--curve``) many.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lm_eval_swift.bon.metrics import auroc, within_question_auroc
from lm_eval_swift.bon.rollouts import QuestionRollout, read_rollouts
from lm_eval_swift.bon.rows import bon_table
from lm_eval_swift.bon.samples import prompt_tokens, response_tokens_from_text
from lm_eval_swift.errors import UsageError
from lm_eval_swift.swift.features import (
    FeatureCache,
    FeatureExtractor,
    FeatureSource,
    feature_source,
    load_base_model,
)
from lm_eval_swift.swift.heads import Entry, SwiftHead, swift_reward


Loss = Literal["bce", "hinge", "dpo"]
EarlyStop = Literal["loss", "within_auroc"]
LOSSES: tuple[str, ...] = ("bce", "hinge", "dpo")
EARLY_STOPS: tuple[str, ...] = ("loss", "within_auroc")
CHECKPOINT = Path("checkpoints") / "last.pt"
# Best-of-k columns of validation (k <= the questions' N). Not the rows' BON_KS (1, 4, 16, 64): training rollouts
# have about 8 samples a question, and k = 8 (all of them) is what a head is chosen by (experiments/smollm2_gsm8k).
VALIDATION_KS = (1, 4, 8)
SCORE = "swift"  # the score name the validation best-of-N rows are computed with


# ---- data -------------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """All responses of the rollouts, flattened: question q's responses are indices ``spans[q]``."""

    rollouts: list[QuestionRollout]
    prompts: list[list[int]]  # per response: the prompt ids it followed
    responses: list[list[int]]  # per response: its response tokens
    labels: torch.Tensor  # [n] fp32, 1.0 correct / 0.0 incorrect
    question: list[int]  # [n] index into rollouts
    spans: list[range]

    @classmethod
    def load(
        cls, paths: Sequence[str | os.PathLike], tokenizer, max_gen_toks: int
    ) -> TrainingData:
        """Read rollouts files; token ids come from the file or, when absent, from the response-token rule."""
        rollouts = [r for path in paths for r in read_rollouts(path)]
        prompts, responses, labels, question, spans = [], [], [], [], []
        for q, rollout in enumerate(rollouts):
            prompt = list(rollout.prompt_token_ids) or prompt_tokens(
                tokenizer, rollout.prompt
            )
            spans.append(range(len(labels), len(labels) + len(rollout.responses)))
            for r in rollout.responses:
                prompts.append(prompt)
                responses.append(
                    list(r.token_ids)
                    or response_tokens_from_text(r.text, tokenizer, max_gen_toks)
                )
                labels.append(float(r.correct))
                question.append(q)
        if not rollouts:
            raise UsageError(
                f"no questions in rollouts files {[str(p) for p in paths]}"
            )
        return cls(rollouts, prompts, responses, torch.tensor(labels), question, spans)

    def responses_of(self, questions: Sequence[int]) -> list[int]:
        return [i for q in questions for i in self.spans[q]]


def question_key(rollout: QuestionRollout) -> tuple[str, int]:
    """What makes two rollouts the same question (e.g. in two files): task and document id."""
    return rollout.task, rollout.doc_id


def split_questions(
    keys: Sequence[Hashable], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) item indices: round(val_fraction * #distinct keys) keys (at least 1, at most all but
    one), drawn with ``seed``, go to validation with all their items."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise UsageError(
            f"need at least 2 distinct questions to hold some out for validation, got {len(distinct)}"
        )
    n_val = min(max(round(val_fraction * len(distinct)), 1), len(distinct) - 1)
    perm = torch.randperm(
        len(distinct), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    val_keys = {distinct[i] for i in perm[:n_val]}
    train = [i for i, k in enumerate(keys) if k not in val_keys]
    val = [i for i, k in enumerate(keys) if k in val_keys]
    return train, val


def pack_steps(
    data: TrainingData, questions: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Response indices of each step: whole questions, in the given order, up to ``batch_size`` responses a step
    (a question with more is cut into chunks)."""
    steps: list[list[int]] = []
    current: list[int] = []
    for q in questions:
        idx = list(data.spans[q])
        if current and len(current) + len(idx) > batch_size:
            steps.append(current)
            current = []
        while len(idx) > batch_size:
            steps.append(idx[:batch_size])
            idx = idx[batch_size:]
        current += idx
    return steps + [current] if current else steps


def correct_incorrect_pairs(
    questions: Sequence[int], labels: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (c, i) [P] of every (correct, incorrect) pair of items with the same question."""
    by_question: dict[int, tuple[list[int], list[int]]] = {}
    for j, (q, y) in enumerate(zip(questions, labels, strict=True)):
        by_question.setdefault(q, ([], []))[0 if y >= 0.5 else 1].append(j)
    c: list[int] = []
    i: list[int] = []
    for pos, neg in by_question.values():
        for a in pos:
            c += [a] * len(neg)
            i += neg
    return torch.tensor(c, dtype=torch.long), torch.tensor(i, dtype=torch.long)


# ---- losses and metrics -----------------------------------------------------------------------------------------


def objective(
    rewards: torch.Tensor,
    labels: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor],
    loss: Loss,
) -> torch.Tensor | None:
    """Mean loss of rewards R [n] against labels [n] (bce) or over the (correct, incorrect) ``pairs``; None when a
    pairwise loss has no pair."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(rewards, labels)
    c, i = (p.to(rewards.device) for p in pairs)
    if not len(c):
        return None
    margin = rewards[c] - rewards[i]
    return (
        F.relu(1.0 - margin).mean() if loss == "hinge" else -F.logsigmoid(margin).mean()
    )


def validation_metrics(
    data: TrainingData,
    questions: Sequence[int],
    rewards: torch.Tensor,
    loss: Loss,
    ks: Sequence[int] = VALIDATION_KS,
) -> dict[str, Any]:
    """Held-out metrics of rewards R [n_val] of ``data.responses_of(questions)`` (in that order).

    ``val_loss`` (the training objective), ``val_bce``, ``auroc`` (global, R vs correctness), ``within_auroc``
    (same-question correct/incorrect pairs) and ``bon``: best-of-k accuracy {row: {k: acc}} of the report's rows,
    ``swift`` (argmax of R) and ``swift_vote`` (vote weighted by sigmoid(R)) among them. Undefined values are None.
    """
    idx = data.responses_of(questions)
    labels = data.labels[idx]
    pairs = correct_incorrect_pairs([data.question[i] for i in idx], labels.tolist())
    value = objective(rewards, labels, pairs, loss)
    scored, offset = [], 0
    for q in questions:
        rollout = data.rollouts[q]
        rs = [
            replace(r, scores={SCORE: float(rewards[offset + j])})
            for j, r in enumerate(rollout.responses)
        ]
        scored.append(replace(rollout, responses=rs))
        offset += len(rs)
    metrics = {
        "val_loss": None if value is None else float(value),
        "val_bce": float(F.binary_cross_entropy_with_logits(rewards, labels)),
        "auroc": auroc(rewards.tolist(), labels.tolist()),
        "within_auroc": within_question_auroc(
            [
                (
                    [r.scores[SCORE] for r in q.responses],
                    [r.correct for r in q.responses],
                )
                for q in scored
            ]
        ),
        "bon": {
            row: {str(k): acc for k, acc in cols.items()}
            for row, cols in bon_table(scored, ks).items()
        },
        "n_questions": len(questions),
        "n_responses": len(idx),
        "n_pairs": len(pairs[0]),
    }
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in metrics.items()
    }


# ---- logits heads through the output embedding -------------------------------------------------------------------


class ThroughOutputEmbedding(nn.Module):
    """A logits head evaluated on final hidden states h [..., T, d] instead of logits [..., T, V]: when the logits
    are W_out h (no bias, no scaling), head(W_out h) = h (W W_out)^T + b gives the same parts, the same loss and the
    same gradients for the head's W [2, V] and b, from features V/d times narrower (85x for SmolLM2, 32x for
    Llama-3-8B: a feature cache that fits). ``w_out`` [V, d] is a buffer, not trained."""

    def __init__(self, head: SwiftHead, w_out: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("w_out", w_out.detach().float(), persistent=False)

    def reward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [..., T, d], mask [..., T] -> R [...], as ``head.reward(hidden @ w_out.T, mask)``."""
        w, b = self.head.fused()
        return swift_reward(
            F.linear(hidden.float(), w @ self.w_out, b), mask, self.head.gate
        )


@torch.no_grad()
def output_embedding(model: nn.Module) -> torch.Tensor | None:
    """W_out [V, d] when the model's logits are exactly ``hidden_states[-1] @ W_out.T`` (checked on a probe
    sequence), else None (a bias, a logit scale or soft-capping: train on the logits themselves)."""
    lm_head = model.get_output_embeddings()
    if not isinstance(lm_head, nn.Linear) or lm_head.bias is not None:
        return None
    vocab = lm_head.weight.shape[0]
    probe = (torch.arange(1, 9) * 7919 % vocab)[None].to(model.device)
    out = model(
        input_ids=probe, output_hidden_states=True, use_cache=False, logits_to_keep=0
    )
    logits = out.logits.float()
    recomputed = F.linear(
        out.hidden_states[-1].float(),
        lm_head.weight.float().to(out.hidden_states[-1].device),
    )
    tol = 1e-4 if lm_head.weight.dtype == torch.float32 else 2e-2
    scale = logits.abs().max().clamp_min(1.0)
    if not torch.allclose(
        recomputed.to(logits.device), logits, rtol=tol, atol=tol * scale
    ):
        return None
    return lm_head.weight.detach()


# ---- training ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How a head is trained: every setting of ``lm-eval-swift train`` but the rollouts, base model and output.

    Features: hidden-state entries ``layers`` (default all, 0..L) or, with ``logits``, the final logits.
    ``batch_size``: responses per step (one base-model forward). ``cache_dir``: keep fp16 features there when they
    fit ``cache_budget_gb``, else recompute them every epoch. ``device``/``dtype``/``parallelize``: as lm-eval's hf.
    ``max_gen_toks``: of the run that sampled the rollouts (response-token rule for responses without token ids).
    """

    layers: Sequence[int] | None = None
    logits: bool = False
    gate: bool = True
    loss: Loss = "bce"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 40
    patience: int = 3
    early_stop: EarlyStop = "loss"
    val_fraction: float = 0.2
    seed: int = 0
    batch_size: int = 16
    cache_dir: str | os.PathLike | None = None
    cache_budget_gb: float = 50.0
    device: str | None = None
    dtype: str | torch.dtype = "auto"
    parallelize: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    max_gen_toks: int = 1024
    name: str = "swift"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}: choose from {LOSSES}")
        if self.early_stop not in EARLY_STOPS:
            raise UsageError(
                f"unknown early_stop {self.early_stop!r}: choose from {EARLY_STOPS}"
            )
        if self.logits and self.layers:
            raise UsageError(
                "a head reads either hidden-state layers or the logits, not both"
            )
        if self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise UsageError(
                f"batch_size, epochs and patience must be >= 1 (got {self.batch_size}, {self.epochs}, "
                f"{self.patience})"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The settings of parsed ``lm-eval-swift train`` arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


@dataclass
class TrainState:
    """Everything but the head, optimizer and RNG that an epoch checkpoint holds."""

    epoch: int = 0  # epochs completed
    bad_epochs: int = 0  # epochs since the best one
    best_epoch: int = 0
    best_score: float = math.inf  # lower is better
    best_head: dict[str, torch.Tensor] = field(default_factory=dict)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_tokens: int = 0
    train_seconds: float = 0.0


class TrainingSetup:
    """What every fit of a head on these rollouts shares: the base model, the responses and labels, the feature
    entries and (after :meth:`open_features`) the source of their features."""

    def __init__(
        self,
        rollouts: Sequence[str | os.PathLike],
        base_model: str,
        config: TrainConfig,
    ):
        """Load the base model, its tokenizer and the rollouts (no feature is computed yet)."""
        self.rollouts, self.base_model, self.config = list(rollouts), base_model, config
        self.model, self.tokenizer = load_base_model(
            base_model,
            device=config.device,
            dtype=config.dtype,
            parallelize=config.parallelize,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
        )
        self.data = TrainingData.load(rollouts, self.tokenizer, config.max_gen_toks)
        self.kind = "logits" if config.logits else "hidden_states"
        # a logits head whose logits are W_out h reads the final hidden state (entry L), mapped inside its scorer
        self.w_out = output_embedding(self.model) if config.logits else None
        self.layers = self.new_head(config.seed)[0].layers
        self.entries: tuple[Entry, ...] = (
            (self.model.config.get_text_config().num_hidden_layers,)
            if self.w_out is not None
            else self.layers or ("logits",)
        )
        self.source: FeatureSource | None = None

    def split(self) -> tuple[list[int], list[int]]:
        """(training, validation) question indices: the config's seeded validation fraction of the questions."""
        keys = [question_key(r) for r in self.data.rollouts]
        return split_questions(keys, self.config.val_fraction, self.config.seed)

    def new_head(
        self, seed: int
    ) -> tuple[SwiftHead, SwiftHead | ThroughOutputEmbedding]:
        """A freshly initialised head (from ``seed``) and the module that computes its rewards from the features."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = SwiftHead.for_model(
                self.model.config,
                self.base_model,
                cfg.revision,
                self.model,
                kind=self.kind,
                layers=cfg.layers,
                gate=cfg.gate,
                name=cfg.name,
            )
        scorer = (
            head if self.w_out is None else ThroughOutputEmbedding(head, self.w_out)
        )
        return head, scorer

    def open_features(self, progress: bool = True) -> FeatureSource:
        """The features of every response: the feature cache (built by one pass of the base model unless it is
        there already) or, without ``cache_dir`` or over its budget, a pass per call."""
        if self.source is None:
            extractor = FeatureExtractor(
                self.model, self.entries, self.tokenizer.pad_token_id
            )
            self.source = feature_source(
                extractor,
                self.data.prompts,
                self.data.responses,
                batch_size=self.config.batch_size,
                key=json.dumps(
                    [self.base_model, self.config.revision, str(self.model.dtype)]
                ),
                cache_dir=self.config.cache_dir,
                cache_budget_gb=self.config.cache_budget_gb,
                progress=progress,
            )
        return self.source

    def record(self) -> dict[str, Any]:
        """The settings a checkpoint and the saved head record."""
        cfg = self.config
        return {
            "rollouts": [str(Path(p).resolve()) for p in self.rollouts],
            "base_model": self.base_model,
            "revision": cfg.revision,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "features": {"kind": self.kind, "layers": list(self.layers)},
            **{k: getattr(cfg, k) for k in RECORDED},
            "feature_cache": isinstance(self.source, FeatureCache),
            "logits_via_output_embedding": self.w_out is not None,
        }

    def check_pairs(self, train_q: Sequence[int], val_q: Sequence[int]) -> None:
        """Refuse settings that need (correct, incorrect) pairs where there are none."""
        loss, early_stop = self.config.loss, self.config.early_stop
        if loss != "bce" and not self.n_pairs(train_q):
            raise UsageError(
                f"loss {loss!r} needs questions with both correct and incorrect responses; the training split has "
                "none"
            )
        if (loss != "bce" or early_stop == "within_auroc") and not self.n_pairs(val_q):
            raise UsageError(
                "the validation questions have no correct/incorrect response pair, so the pairwise validation "
                "metric is undefined: use more questions, another --seed or --val-fraction, or --loss bce "
                "--early-stop loss"
            )

    def n_pairs(self, questions: Sequence[int]) -> int:
        """(correct, incorrect) response pairs within those questions."""
        idx = self.data.responses_of(questions)
        labels = self.data.labels[idx].tolist()
        return len(
            correct_incorrect_pairs([self.data.question[i] for i in idx], labels)[0]
        )


# the settings a head records besides its rollouts, model and features
RECORDED = ("gate", "loss", "lr", "weight_decay", "epochs", "patience", "early_stop", "val_fraction", "seed",
            "batch_size", "max_gen_toks")  # fmt: skip


def train_head(
    rollouts: Sequence[str | os.PathLike],
    base_model: str,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    **settings: Any,
) -> SwiftHead:
    """Train a head for ``base_model`` on ``rollouts`` files and save it to ``out_dir``; returns it (on cpu).

    ``config`` (default :class:`TrainConfig`'s defaults) with ``settings`` (TrainConfig fields) replaced. The saved
    config's ``training`` holds these settings, the best epoch's validation metrics, the epoch history and the
    training throughput (response tokens per second, feature extraction included). A run started again with the same
    settings resumes from the last epoch checkpoint in ``out_dir``.
    """
    config = replace(config or TrainConfig(), **settings)
    out_dir = Path(out_dir)
    setup = TrainingSetup(rollouts, base_model, config)
    train_q, val_q = setup.split()
    setup.check_pairs(train_q, val_q)
    setup.open_features(progress)
    head, state = fit(
        setup, train_q, val_q, config.seed, out_dir / CHECKPOINT, progress
    )
    head.training_info = {
        **setup.record(),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "metrics": state.best_metrics,
        "history": state.history,
        "train_tokens_per_s": state.train_tokens / state.train_seconds
        if state.train_seconds
        else None,
        "n_train_questions": len(train_q),
        "n_train_responses": len(setup.data.responses_of(train_q)),
        "validation_questions": [
            list(question_key(setup.data.rollouts[q])) for q in val_q
        ],
    }
    head.cpu().save_pretrained(out_dir)
    return head


def fit(
    setup: TrainingSetup,
    train_q: Sequence[int],
    val_q: Sequence[int],
    seed: int,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> tuple[SwiftHead, TrainState]:
    """Train a new head (initialised and shuffled from ``seed``) on questions ``train_q``, validated on ``val_q``
    after each epoch; returns the best epoch's head and the run's state. With ``checkpoint``, each epoch is saved
    there and a run of the same settings resumes from it."""
    cfg, source = setup.config, setup.open_features(progress)
    head, scorer = setup.new_head(seed)
    scorer.to(source.device)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    rng = torch.Generator().manual_seed(seed)
    record = setup.record() if checkpoint is not None else {}
    state = None
    if checkpoint is not None:
        state = _resume(checkpoint, record, head, optimizer, rng)
    state = state or TrainState()
    epochs_bar = tqdm(
        range(state.epoch, cfg.epochs),
        initial=state.epoch,
        total=cfg.epochs,
        desc="SWIFT training",
        unit="epoch",
        disable=not progress,
    )
    for epoch in epochs_bar:
        if state.bad_epochs >= cfg.patience:
            break
        order = [
            train_q[i] for i in torch.randperm(len(train_q), generator=rng).tolist()
        ]
        train_loss = _train_epoch(
            scorer, optimizer, source, setup.data,
            pack_steps(setup.data, order, cfg.batch_size), cfg.loss, state, f"epoch {epoch + 1}", progress,
        )  # fmt: skip
        rewards = _rewards(
            scorer, source, setup.data.responses_of(val_q), cfg.batch_size, progress
        )
        metrics = validation_metrics(setup.data, val_q, rewards, cfg.loss)
        shown = _end_epoch(state, head, metrics, train_loss, cfg.early_stop)
        epochs_bar.set_postfix({k: v for k, v in shown.items() if v is not None})
        if checkpoint is not None:
            _save_checkpoint(checkpoint, record, head, optimizer, rng, state)
    epochs_bar.close()
    if not state.best_head:
        raise RuntimeError(
            f"no epoch gave a finite validation {cfg.early_stop}: history {state.history}"
        )
    head.load_state_dict(state.best_head)
    return head, state


def _end_epoch(
    state: TrainState,
    head: SwiftHead,
    metrics: dict[str, Any],
    train_loss: float | None,
    early_stop: EarlyStop,
) -> dict[str, Any]:
    """Count the epoch in ``state`` (keeping the head when it is the best so far); the figures to show."""
    score = metrics["val_loss"] if early_stop == "loss" else -metrics["within_auroc"]
    state.epoch += 1
    if score < state.best_score:
        state.best_epoch, state.best_score, state.best_metrics = (
            state.epoch,
            score,
            metrics,
        )
        state.bad_epochs = 0
        state.best_head = {
            k: v.detach().cpu().clone() for k, v in head.state_dict().items()
        }
    else:
        state.bad_epochs += 1
    summary = {k: metrics[k] for k in ("val_loss", "val_bce", "auroc", "within_auroc")}
    state.history.append({"epoch": state.epoch, "train_loss": train_loss, **summary})
    return {"train_loss": train_loss, **summary, "best": state.best_epoch}


def _train_epoch(
    head: SwiftHead | ThroughOutputEmbedding,
    optimizer: torch.optim.Optimizer,
    source: FeatureSource,
    data: TrainingData,
    steps: Sequence[list[int]],
    loss: Loss,
    state: TrainState,
    desc: str,
    progress: bool,
) -> float | None:
    """One pass over ``steps``; returns the mean step loss (None: no step had a loss). Adds to the state's token and
    time counts."""
    total, n = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(steps, desc=desc, unit="step", leave=False, disable=not progress)
    for idx in bar:
        features, mask = source(idx)
        labels = data.labels[idx]
        pairs = correct_incorrect_pairs(
            [data.question[i] for i in idx], labels.tolist()
        )
        value = objective(
            head.reward(features, mask), labels.to(source.device), pairs, loss
        )
        state.train_tokens += sum(len(data.responses[i]) for i in idx)
        if value is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total, n = total + value.item(), n + 1
        bar.set_postfix(loss=total / n)
    state.train_seconds += time.perf_counter() - start
    return total / n if n else None


@torch.no_grad()
def _rewards(
    head: SwiftHead | ThroughOutputEmbedding,
    source: FeatureSource,
    indices: Sequence[int],
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """R [len(indices)] (fp32, cpu) of the head for those responses."""
    out = []
    for s in tqdm(
        range(0, len(indices), batch_size),
        desc="validation",
        unit="batch",
        leave=False,
        disable=not progress,
    ):
        features, mask = source(indices[s : s + batch_size])
        out.append(head.reward(features, mask).cpu())
    return torch.cat(out)


def _save_checkpoint(
    path: Path,
    config: dict,
    head: SwiftHead,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    state: TrainState,
) -> None:
    """Write atomically (temp file + rename): a kill mid-write keeps the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "config": config,
            "head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.get_state(),
            "state": asdict(state),
        },
        tmp,
    )
    os.replace(tmp, path)


def _resume(
    path: Path,
    config: dict,
    head: SwiftHead,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
) -> TrainState | None:
    """Restore head, optimizer and RNG from a checkpoint of the same configuration; None when there is none."""
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["config"] != config:
        changed = sorted(
            k
            for k in {*config, *ckpt["config"]}
            if config.get(k) != ckpt["config"].get(k)
        )
        raise UsageError(
            f"{path} is a checkpoint of a run with other settings ({', '.join(changed)}): train into another "
            f"output directory, or delete {path.parent} to start over"
        )
    head.load_state_dict(ckpt["head"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.set_state(ckpt["rng"])
    return TrainState(**ckpt["state"])


# ---- command line -----------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    """Run ``lm-eval-swift train`` and print the held-out metrics (or, with ``--curve``, the learning curve)."""
    config = TrainConfig.from_args(args)
    if args.curve:
        from lm_eval_swift.swift.curve import cmd_curve

        cmd_curve(args, config)
        return
    head = train_head(args.rollouts, args.base_model, args.out, config)
    info = head.training_info
    print(
        f"SWIFT head saved to {args.out} (best epoch {info['best_epoch']} of {info['epochs_run']})"
    )
    print(
        json.dumps(
            {
                "metrics": info["metrics"],
                "train_tokens_per_s": info["train_tokens_per_s"],
            },
            indent=2,
        )
    )
