"""Confidence scorers: training-free scores of a response from the generator's own next-token distributions.

Every scorer reads, for each response token t (t = 1..T), the model's next-token distribution p_t over the full
vocabulary V at the position that predicts token t: the softmax of the raw logits, before temperature, top-k or
top-p (whoever sampled, and however). All are oriented so that higher = more confident:

================  ==============================================================  ==================================
name              score (T response tokens, y_t the token, p_t its distribution)  vote weight (``<name>_vote``)
================  ==============================================================  ==================================
logprob           (1/T) sum_t log p_t(y_t)            (<= 0)                        exp(score): the geometric-mean
                                                                                    token probability, in (0, 1]
self_certainty    (1/T) sum_t KL(U || p_t) = (1/T) sum_t [-log V - (1/V) sum_v      score (>= 0)
                  log p_t(v)]                         (>= 0)
neg_entropy       -(1/T) sum_t H(p_t), H(p) = -sum_v p(v) log p(v)   (<= 0)         exp(score), in (0, 1]
deepconf_lowest   min over windows of ``window`` consecutive tokens of the mean     score (>= 0)
                  token confidence c_t = -(1/k) sum_{v in top-k of p_t} log p_t(v)
                  (the mean of all T when T < window)   (>= 0)
deepconf_tail     mean of c_t over the last ``tail`` tokens (all when T < tail)     score (>= 0)
================  ==============================================================  ==================================

Sources: logprob is the classic mean log-likelihood (perplexity; its probability-weighted vote is RPC's,
Zhou et al. 2025); self-certainty is Kang, Zhao & Song 2025, "Scalable Best-of-N Selection for Large Language
Models via Self-Certainty"; neg_entropy is the mean token entropy (e.g. Kadavath et al. 2022; CISC, Taubenfeld et
al. 2025, weights a vote by such a confidence); deepconf_* are Fu, Wang, Tian & Zhao 2025, "Deep Think with
Confidence" (k = 20, their lowest group confidence and tail confidence, whose vote weight is the confidence).

Window and tail (:data:`WINDOW`, :data:`TAIL`): DeepConf uses 2,048 tokens on reasoning traces of 10,000+ tokens,
so a window is a few reasoning steps and the tail the final answer's part. Our responses have 100-1,000 tokens
(SmolLM2 on GSM8K: median 222, 10% under 101): a 2,048-token window would be the whole response, i.e. the mean.
32 tokens is about one GSM8K step ("She has 5 + 3 = 8 apples, so ...", 15-30 tokens) with some averaging of
single-token noise, so the lowest window finds the least confident step; and the last 32 tokens hold the final
statement of the answer, which is what the tail is meant to weigh. Both are parameters (:class:`ConfidenceParams`).

This module is pure Python (the rows import it); the arithmetic on logits is in :mod:`.compute`.
"""

from __future__ import annotations

from dataclasses import dataclass


TOP_K = 20  # DeepConf's k
WINDOW = 32  # tokens per DeepConf group (see the module docstring)
TAIL = 32  # tokens of DeepConf's tail


@dataclass(frozen=True)
class ConfidenceParams:
    """The parameters of the confidence scorers: DeepConf's ``top_k`` candidates per token, group ``window`` and
    ``tail`` length, in tokens."""

    top_k: int = TOP_K
    window: int = WINDOW
    tail: int = TAIL

    def __post_init__(self) -> None:
        for name in ("top_k", "window", "tail"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"confidence {name} must be >= 1, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class ConfidenceScorer:
    """A confidence scorer's definition: its ``formula``, ``source`` and how its score becomes a non-negative vote
    ``weight`` (a :func:`~lm_eval_swift.bon.selectors.weighted_vote` weight: ``exp`` or ``value``)."""

    name: str
    formula: str
    source: str
    weight: str


CONFIDENCE_SCORERS: dict[str, ConfidenceScorer] = {
    s.name: s
    for s in (
        ConfidenceScorer(
            "logprob",
            "mean over response tokens of log p_t(y_t)",
            "mean log-likelihood (perplexity); RPC (Zhou et al. 2025) for the weighted vote",
            "exp",
        ),
        ConfidenceScorer(
            "self_certainty",
            "mean over response tokens of KL(uniform || p_t) over the full vocabulary",
            "Kang, Zhao & Song 2025 (arXiv 2502.18581)",
            "value",
        ),
        ConfidenceScorer(
            "neg_entropy",
            "minus the mean over response tokens of the entropy of p_t",
            "mean token entropy (e.g. Kadavath et al. 2022); CISC (Taubenfeld et al. 2025) for the weighted vote",
            "exp",
        ),
        ConfidenceScorer(
            "deepconf_lowest",
            "lowest mean over a window of tokens of c_t = -mean log-prob of p_t's top-k tokens",
            "Fu, Wang, Tian & Zhao 2025, lowest group confidence (arXiv 2508.15260)",
            "value",
        ),
        ConfidenceScorer(
            "deepconf_tail",
            "mean of c_t over the last tokens",
            "Fu, Wang, Tian & Zhao 2025, tail confidence (arXiv 2508.15260)",
            "value",
        ),
    )
}
"""Name -> definition, in the order scores are stored and rows listed."""


def parse_confidence(spec: str | bool | None) -> tuple[str, ...]:
    """``"all"``/true -> every scorer; ``"logprob,deepconf_tail"`` -> those; None, ``""``, ``"none"``/false ->
    none. An unknown name raises ``ValueError``."""
    if (
        spec is None
        or spec is False
        or str(spec).strip().lower() in ("", "none", "false", "off")
    ):
        return ()
    if spec is True or str(spec).strip().lower() in ("all", "true"):
        return tuple(CONFIDENCE_SCORERS)
    names = tuple(s.strip() for s in str(spec).split(",") if s.strip())
    unknown = [n for n in names if n not in CONFIDENCE_SCORERS]
    if unknown:
        raise ValueError(
            f"unknown confidence scorer(s) {', '.join(unknown)}: use {', '.join(CONFIDENCE_SCORERS)} or 'all'"
        )
    return names
