"""The confidence scorers' arithmetic (definitions in :mod:`lm_eval_swift.confidence`): per-token statistics of the
next-token logits, folded into the five scores either all at once (:func:`confidence_scores`, the teacher-forced
pass) or token by token while sampling (:class:`ConfidenceCapture`, state per sample independent of its length).

Per token, :func:`token_stats` gives four numbers from the raw logits [n, V] and the tokens [n]: log p(y), KL(U || p),
-H(p) and DeepConf's token confidence c. The scores are means of the first three and DeepConf's window statistics of
c, accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lm_eval_swift.confidence import CONFIDENCE_SCORERS, ConfidenceParams


Scores = dict[str, float]


def token_stats(logits: torch.Tensor, tokens: torch.Tensor, top_k: int) -> torch.Tensor:
    """[n, 4] fp32: (log p(y), KL(uniform || p), -entropy(p), -mean log-prob of p's top-k) of each row of the raw
    logits [n, V] (any float dtype, computed in fp32) and its token [n].

    With x the logits and L = logsumexp(x): log p(v) = x_v - L, so KL(U || p) = L - mean(x) - log V, -H(p) =
    sum_v p(v) x_v - L and DeepConf's c = L - mean(top-k of x). One softmax is the only [n, V] temporary (this runs
    at every decode step); L comes from it and the largest logit: L = max(x) - log p(argmax)."""
    x = logits.float()
    top, where = x.topk(min(top_k, x.shape[-1]), dim=-1)
    p = torch.softmax(x, dim=-1)
    lse = top[:, 0] - p.gather(-1, where[:, :1]).squeeze(-1).log()
    chosen = x.gather(-1, tokens.view(-1, 1).to(x.device)).squeeze(-1) - lse
    self_certainty = lse - x.mean(-1) - math.log(x.shape[-1])
    neg_entropy = torch.linalg.vecdot(p, x) - lse
    return torch.stack(
        [chosen, self_certainty, neg_entropy, lse - top.mean(-1)], dim=-1
    )


def summarise(stats: torch.Tensor, params: ConfidenceParams) -> Scores:
    """The scores of one response from its tokens' :func:`token_stats` [T, 4] (empty: no scores)."""
    t = stats.shape[0]
    if t == 0:
        return {}
    stats = stats.double().cpu()
    means = stats[:, :3].mean(0).tolist()
    conf = stats[:, 3]
    if t >= params.window:
        sums = torch.cat([conf.new_zeros(1), conf.cumsum(0)])
        lowest = float(
            ((sums[params.window :] - sums[: -params.window]) / params.window).min()
        )
    else:
        lowest = float(conf.mean())
    tail = float(conf[-params.tail :].mean())
    return dict(zip(CONFIDENCE_SCORERS, [*means, lowest, tail], strict=True))


def confidence_scores(
    prompt_logits: torch.Tensor,
    response_logits: torch.Tensor,
    responses: Sequence[Sequence[int]],
    params: ConfidenceParams,
) -> list[Scores]:
    """Scores of B responses of one prompt from a teacher-forced pass: ``prompt_logits`` [V] at the prompt's last
    position (predicting each response's first token) and ``response_logits`` [B, T_max, V] at the response
    positions (position t predicts token t+1). One response at a time, so only [T, V] temporaries are made."""
    out = []
    for b, ids in enumerate(responses):
        if not len(ids):
            out.append({})
            continue
        logits = torch.cat([prompt_logits[None], response_logits[b, : len(ids) - 1]])
        tokens = torch.tensor(list(ids), device=logits.device)
        out.append(summarise(token_stats(logits, tokens, params.top_k), params))
    return out


class ConfidenceCapture:
    """Running confidence state of ``rows`` decode rows, fed one token per live row per step (:meth:`update`).

    A response may end before the last sampled tokens (a stop string is cut off), so each row's last ``lag`` tokens
    wait as per-token stats in a ring ``pending`` [rows, lag, 4] and are folded in when older: ``finish`` folds the
    kept ones. Folded state per row: sums of the first three stats, DeepConf's last ``max(window, tail)`` token
    confidences (a ring), the current window's sum and the lowest window mean. All float64; memory per row is
    constant: (lag * 4 + max(window, tail) + 6) numbers.
    """

    def __init__(self, rows: int, params: ConfidenceParams, lag: int = 32):
        self.params, self.lag = params, lag
        self.ring = max(params.window, params.tail)
        f64 = {"dtype": torch.float64}
        self.pending = torch.zeros(rows, lag, 4, **f64)
        self.seen = torch.zeros(rows, dtype=torch.long)  # tokens fed
        self.sums = torch.zeros(rows, 3, **f64)
        self.folded = torch.zeros(rows, dtype=torch.long)
        self.conf = torch.zeros(rows, self.ring, **f64)
        self.window_sum = torch.zeros(rows, **f64)
        self.lowest = torch.full((rows,), math.inf, **f64)

    def reset(self, rows: slice) -> None:
        """Start rows ``rows`` afresh (new samples admitted)."""
        for state in (self.seen, self.sums, self.folded, self.window_sum):
            state[rows] = 0
        self.lowest[rows] = math.inf

    def update(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Rows 0..n-1 sampled ``tokens`` [n] from their raw ``logits`` [n, V]."""
        stats = token_stats(logits, tokens, self.params.top_k).double().cpu()
        n = stats.shape[0]
        rows = torch.arange(n)
        slot = self.seen[:n] % self.lag
        full = self.seen[:n] >= self.lag
        if bool(full.any()):
            self._fold(rows[full], self.pending[rows[full], slot[full]])
        self.pending[rows, slot] = stats
        self.seen[:n] += 1

    def _fold(self, rows: torch.Tensor, stats: torch.Tensor) -> None:
        """Fold one token's stats [m, 4] into rows ``rows`` [m]."""
        window = self.params.window
        n = self.folded[rows]
        self.sums[rows] += stats[:, :3]
        leaving = self.conf[rows, (n - window) % self.ring] * (n >= window)
        self.window_sum[rows] += stats[:, 3] - leaving
        self.conf[rows, n % self.ring] = stats[:, 3]
        self.folded[rows] = n + 1
        full = n + 1 >= window
        mean = self.window_sum[rows] / window
        self.lowest[rows] = torch.where(
            full, torch.minimum(self.lowest[rows], mean), self.lowest[rows]
        )

    @torch.inference_mode()  # the state may be inference tensors (made while decoding)
    def finish(self, row: int, length: int) -> Scores | None:
        """The scores of row ``row``'s first ``length`` tokens (its response); None when more than ``lag`` sampled
        tokens were cut off (then its scores need the teacher-forced pass). The state is left as it was."""
        seen, folded = int(self.seen[row]), int(self.folded[row])
        if length < folded or length > seen:
            return None
        one, first = self.detach(row), torch.tensor([0])
        for i in range(folded, length):
            one._fold(first, one.pending[0, i % self.lag][None])
        if length == 0:
            return {}
        means = (one.sums[0] / length).tolist()
        p = self.params
        lowest = float(
            one.lowest[0] if length >= p.window else one.window_sum[0] / length
        )
        last = torch.arange(length - min(length, p.tail), length) % self.ring
        tail = float(one.conf[0, last].mean())
        return dict(zip(CONFIDENCE_SCORERS, [*means, lowest, tail], strict=True))

    STATE = ("pending", "seen", "sums", "folded", "conf", "window_sum", "lowest")

    def detach(self, row: int) -> ConfidenceCapture:
        """A one-row copy of row ``row``'s state (a finished sample's, for :meth:`finish` once its length is known)."""
        one = ConfidenceCapture.__new__(ConfidenceCapture)
        one.params, one.lag, one.ring = self.params, self.lag, self.ring
        for name in self.STATE:
            setattr(one, name, getattr(self, name)[row : row + 1].clone())
        return one

    def move(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy rows ``src`` to rows ``dst`` (the decode batch compacted)."""
        for state in (
            self.pending,
            self.seen,
            self.sums,
            self.folded,
            self.conf,
            self.window_sum,
            self.lowest,
        ):
            state[dst] = state[src]
