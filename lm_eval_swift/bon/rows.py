"""The rows of a best-of-N table and their k values, and the table itself (:func:`bon_table`): the last step of
the one direction data flows (prompt -> samples -> graded -> scored -> selected -> rows).

The one definition of the result rows: lm-eval's filter pipelines
(:func:`~lm_eval_swift.harness.filters.filter_list`) and the report's table (:func:`bon_table`) are both made from
:func:`rows` and :data:`BON_KS`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from lm_eval_swift.bon.rollouts import QuestionRollout
from lm_eval_swift.bon.selectors import SELECTORS
from lm_eval_swift.confidence import CONFIDENCE_SCORERS
from lm_eval_swift.errors import UsageError


log = logging.getLogger(__name__)

Row = tuple[str, dict]  # (selector name, selector kwargs)

BON_KS = (1, 4, 16, 64)
"""The k values of every row (the first k of a question's N samples; k > N is left out)."""

ETAS = (10, 90)
"""The percentages of the filter-then-vote rows ``<score>_top<eta>`` that ``report``, ``leaderboard`` and ``plot``
show by default (DeepConf's 10% and 90%). The library functions and lm-eval's results table default to none, so
that table keeps its rows unless ``--metadata '{"etas": [10, 90]}'`` asks for them."""

CLASSIC_ROWS: dict[str, Row] = {
    "first": ("first", {}),  # k = 1 only
    "mean": (
        "mean",
        {},
    ),  # k = N only: not a selection, the mean correctness of all N samples
    "maj": ("maj", {}),
    "oracle": ("oracle", {}),
}


def score_kind(name: str, reward_models: Collection[str]) -> str:
    """``"reward_model"`` (it records a cost), ``"confidence"`` (a confidence scorer's name) or ``"head"``."""
    if name in reward_models:
        return "reward_model"
    return "confidence" if name in CONFIDENCE_SCORERS else "head"


def vote_weight(name: str, kind: str) -> str:
    """How a score becomes a vote weight: sigmoid of a SWIFT reward (a logit), min-max per question for a reward
    model, the confidence scorer's own rule (:data:`~lm_eval_swift.confidence.CONFIDENCE_SCORERS`)."""
    if kind == "confidence":
        return CONFIDENCE_SCORERS[name].weight
    return "minmax" if kind == "reward_model" else "sigmoid"


def score_rows(
    name: str, kind: str = "head", etas: Sequence[float] = ()
) -> dict[str, Row]:
    """The rows a score adds: argmax ``<name>``, weighted vote ``<name>_vote`` (weights by :func:`vote_weight`),
    filter-then-vote ``<name>_top<eta>`` for each eta, and for a reward model its combinations with SWIFT."""
    rows: dict[str, Row] = {
        name: ("argmax", {"score": name}),
        f"{name}_vote": ("vote", {"score": name, "weight": vote_weight(name, kind)}),
    }
    for eta in etas:
        rows[f"{name}_top{eta:g}"] = ("top", {"score": name, "eta": eta})
    if kind == "reward_model":
        for method in ("scaling", "ranking"):
            rows[f"swift+{name}_{method}"] = (
                "combined",
                {"scores": ["swift", name], "method": method},
            )
    return rows


def rows(
    score_names: Collection[str],
    reward_models: Collection[str] = (),
    etas: Sequence[float] = (),
) -> dict[str, Row]:
    """Row name -> (selector name, selector kwargs): the classic rows, then the rows of each score (SWIFT heads
    first, then confidence scorers, then reward models, which also combine with ``swift`` when it is present)."""
    kinds = {"head": 0, "confidence": 1, "reward_model": 2}
    order = list(CONFIDENCE_SCORERS)
    out = dict(CLASSIC_ROWS)
    for name in sorted(
        score_names,
        key=lambda s: (
            kinds[score_kind(s, reward_models)],
            s != "swift",
            order.index(s) if s in order else 0,
            s,
        ),
    ):
        kind = score_kind(name, reward_models)
        out.update(
            {
                row: spec
                for row, spec in score_rows(name, kind, etas).items()
                if not (spec[0] == "combined" and "swift" not in score_names)
            }
        )
    return out


def row_ks(
    row: str, n: int, ks: Sequence[int] = BON_KS, selector: str = ""
) -> list[int]:
    """The k values of ``row`` (whose selector is ``selector``) for N = ``n`` samples: ``first`` at 1, ``mean`` at
    N, a filter-then-vote row (``top``) at each k > 1 (at k = 1 it is ``first``), every other row at each k <= N."""
    if selector == "top":
        return [k for k in ks if 1 < k <= n]
    return {"first": [1], "mean": [n]}.get(row) or [k for k in ks if k <= n]


def needed_scores(row: Row) -> set[str]:
    """The scores a row's selector reads."""
    kwargs = row[1]
    return {kwargs["score"]} if "score" in kwargs else set(kwargs.get("scores", ()))


def score_names(rollouts: Sequence[QuestionRollout]) -> tuple[list[str], set[str]]:
    """(every score some response carries, sorted; those of reward models, which record a cost)."""
    names = sorted({s for r in rollouts for resp in r.responses for s in resp.scores})
    return names, {s for r in rollouts for s in r.costs}


def sample_counts(rollouts: Sequence[QuestionRollout]) -> tuple[int, int]:
    """(smallest, largest) N over the questions."""
    sizes = [len(r.responses) for r in rollouts]
    return min(sizes), max(sizes)


def bon_table(
    rollouts: Sequence[QuestionRollout],
    ks: Sequence[int] = BON_KS,
    *,
    warn: bool = True,
    etas: Sequence[float] = (),
) -> dict[str, dict[int, float]]:
    """Accuracy of each row at each k (first k of the N samples); ``first`` at k=1 and ``mean`` at k=N only;
    ``etas``: the percentages of the filter-then-vote rows.

    When the questions' N differ, each question's own N is used: ``mean`` averages all of a question's samples
    (its column is the largest N), and the other rows keep only the k every question has. With ``warn``, that and
    responses lacking a score that others carry are logged as warnings.
    """
    if not rollouts:
        raise UsageError("no rollouts to report on")
    n_min, n = sample_counts(rollouts)
    task = rollouts[0].task
    if warn and n_min != n:
        short = sum(len(r.responses) < n for r in rollouts)
        log.warning(
            "%s: N differs between questions (%d of %d have fewer than %d samples, the fewest %d): mean@N uses each "
            "question's own N; the other rows keep only k <= %d", task, short, len(rollouts), n, n_min, n_min,
        )  # fmt: skip
    names, reward_models = score_names(rollouts)
    total = sum(len(r.responses) for r in rollouts)
    for name in names if warn else ():
        if missing := sum(
            name not in resp.scores for r in rollouts for resp in r.responses
        ):
            log.warning("%s: %d of %d responses have no %r score; they rank below every scored response in its rows",
                        task, missing, total, name)  # fmt: skip
    table: dict[str, dict[int, float]] = {}
    for row, (selector, kwargs) in rows(names, reward_models, etas).items():
        if selector == "top" and not row_ks(row, n_min, ks, selector):
            continue  # only k = 1 asked: there it is ``first``
        fn = SELECTORS[selector]
        ks_of_row = [n] if row == "mean" else row_ks(row, n_min, ks, selector)
        table[row] = {
            k: sum(fn(r.responses[:k], **kwargs).correct for r in rollouts)
            / len(rollouts)
            for k in ks_of_row
        }
    return table
