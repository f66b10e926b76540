"""Learning curves: how a head's held-out quality grows with the number of training questions.

    lm-eval-swift train rollouts.jsonl --base-model MODEL --out curves/model --curve 100 200 400 800

One validation split (``val_fraction`` of the questions, drawn with ``seed``) serves every fit. For each of
``seeds`` curve seeds s, the remaining training questions are shuffled once (seed s) and the head of size n is
trained on the first n of them, so each size contains the smaller ones; the head's initialisation and shuffling
also come from s. The features of every response are computed once (one pass of the base model into the feature
cache) and read by every fit.

Each fit keeps its best epoch (as ``lm-eval-swift train``) and is recorded with its validation metrics (loss, global
and within-question AUROC, best-of-k accuracy of the first k samples per question, the rows' convention) as a line
of ``OUT/curve_fits.jsonl``, so a stopped curve resumes with the fits it lacks (and a curve given more sizes or
seeds fits only those). The outputs: ``curve_seeds.csv`` (one row per seed and size), ``curve.csv`` (per size: mean
and standard deviation over the seeds of every metric) and ``curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from lm_eval_swift.errors import UsageError
from lm_eval_swift.paths import user_cache_dir
from lm_eval_swift.swift.features import FeatureCache
from lm_eval_swift.swift.training import (
    TrainConfig,
    TrainingData,
    TrainingSetup,
    TrainState,
    fit,
    question_key,
)


FITS, SEEDS_CSV, CURVE_CSV, PLOT = (
    "curve_fits.jsonl",
    "curve_seeds.csv",
    "curve.csv",
    "curve.png",
)
METRICS = ("val_loss", "val_bce", "auroc", "within_auroc")
# fewer validation questions with both right and wrong responses than this: selection metrics cannot rank the sizes
FEW_MIXED = 10

log = logging.getLogger(__name__)


def check_sizes(sizes: Sequence[int], n_train: int | None = None) -> list[int]:
    """``sizes`` when they are positive, strictly increasing and (given ``n_train``) at most the number of training
    questions; else a :class:`UsageError`."""
    sizes = [int(n) for n in sizes]
    if not sizes or sizes[0] < 1:
        raise UsageError(
            f"--curve sizes must be positive numbers of questions, got {sizes}"
        )
    if any(b <= a for a, b in zip(sizes[:-1], sizes[1:], strict=True)):
        raise UsageError(f"--curve sizes must be strictly increasing, got {sizes}")
    if n_train is not None and sizes[-1] > n_train:
        raise UsageError(
            f"--curve size {sizes[-1]} is more than the {n_train} training questions left after holding out the "
            "validation split: use smaller sizes, more rollouts or a smaller --val-fraction"
        )
    return sizes


def nested_subsets(
    keys: Sequence[Any], train_q: Sequence[int], sizes: Sequence[int], seed: int
) -> dict[int, list[int]]:
    """{n: the training items of the first n distinct question ``keys`` of ``train_q`` in the order drawn with
    ``seed``} (item indices in ``train_q``'s order); the subsets are nested."""
    distinct = list(dict.fromkeys(keys[q] for q in train_q))
    perm = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    rank = {distinct[i]: r for r, i in enumerate(perm.tolist())}
    return {n: [q for q in train_q if rank[keys[q]] < n] for n in sizes}


def mixed_questions(data: TrainingData, questions: Sequence[int]) -> int:
    """How many of ``questions`` have both right and wrong responses (those that within-question AUROC and best-of-k
    selection are decided on)."""
    return sum(
        1
        for q in questions
        if 0 < data.labels[data.spans[q]].sum() < len(data.spans[q])
    )


def fit_row(
    seed: int, questions: int, responses: int, state: TrainState
) -> dict[str, Any]:
    """One fit's line: its seed and size, best epoch and that epoch's validation metrics (``<row>@<k>``
    accuracies as lm-eval names its filters)."""
    m = state.best_metrics
    row = {"seed": seed, "questions": questions, "responses": responses,
           "best_epoch": state.best_epoch, "epochs_run": state.epoch, **{k: m[k] for k in METRICS}}  # fmt: skip
    for name, cols in m["bon"].items():
        for k, acc in cols.items():
            row[name if name == "first" else f"{name}@{k}"] = acc
    return row


def learning_curve(
    rollouts: Sequence[str | os.PathLike],
    base_model: str,
    out_dir: str | os.PathLike,
    sizes: Sequence[int],
    config: TrainConfig,
    seeds: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fit a head for every curve seed (``config.seed`` + 0 .. seeds-1) and size; returns the fits' lines
    (seed-major, sizes increasing) after writing the CSVs and the PNG to ``out_dir``. Fits already in
    ``out_dir``'s fits file with the same settings are read, not redone."""
    sizes = check_sizes(sizes)
    if seeds < 1:
        raise UsageError(f"--curve-seeds must be >= 1, got {seeds}")
    out_dir = Path(out_dir)
    setup = TrainingSetup(rollouts, base_model, config)
    train_q, val_q = setup.split()
    keys = [question_key(r) for r in setup.data.rollouts]
    check_sizes(sizes, len({keys[q] for q in train_q}))
    seed_list = [config.seed + s for s in range(seeds)]
    subsets = {s: nested_subsets(keys, train_q, sizes, s) for s in seed_list}
    for s in (
        seed_list
    ):  # before the feature pass: a pairwise loss needs pairs in every subset
        setup.check_pairs(subsets[s][sizes[0]], val_q)
    mixed = mixed_questions(setup.data, val_q)
    if mixed < FEW_MIXED:
        correct = int(setup.data.labels[setup.data.responses_of(val_q)].sum())
        log.warning(
            "only %d of the %d validation questions have both right and wrong responses (%d correct responses): "
            "the within-question AUROC and best-of-k of every size rest on them, so the curve can hardly tell the "
            "sizes apart", mixed, len(val_q), correct,
        )  # fmt: skip
    if not isinstance(setup.open_features(progress), FeatureCache):
        raise UsageError(
            "a learning curve reads every response's features many times: they must fit the feature cache "
            "(raise --cache-budget-gb, or read fewer --layers)"
        )
    record = setup.record()  # not the sizes: a fit does not depend on the others
    done = _read_fits(out_dir / FITS, record)
    todo = [(s, n) for s in seed_list for n in sizes]
    bar = tqdm(todo, desc="Learning curve", unit="fit", disable=not progress)
    for seed, n in bar:
        if (seed, n) in done:
            continue
        subset = subsets[seed][n]
        _, state = fit(setup, subset, val_q, seed, progress=progress)
        done[seed, n] = fit_row(seed, n, len(setup.data.responses_of(subset)), state)
        _append_fit(out_dir / FITS, record, done[seed, n])
        bar.set_postfix(
            questions=n, seed=seed, within_auroc=done[seed, n]["within_auroc"]
        )
    fits = [done[key] for key in todo]
    write_outputs(
        fits,
        out_dir,
        title=f"{Path(base_model).name}, {config.loss} head: {len(val_q)} validation questions "
        f"({mixed} with right and wrong responses)",
    )
    return fits


def _read_fits(path: Path, record: dict) -> dict[tuple[int, int], dict]:
    """The fits recorded in ``path`` with these settings, by (seed, questions)."""
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        (f["fit"]["seed"], f["fit"]["questions"]): f["fit"]
        for f in lines
        if f["settings"] == record
    }


def _append_fit(path: Path, record: dict, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"settings": record, "fit": row}) + "\n")


def summarize(fits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size (increasing): ``questions``, ``seeds`` and, for every metric, ``<m>_mean`` and ``<m>_std`` (sample
    standard deviation over the seeds, empty with one seed; undefined values are left out)."""
    skip = {"seed", "questions"}
    metrics = [k for k in fits[0] if k not in skip]
    out = []
    for n in sorted({f["questions"] for f in fits}):
        group = [f for f in fits if f["questions"] == n]
        row: dict[str, Any] = {"questions": n, "seeds": len(group)}
        for m in metrics:
            values = [f[m] for f in group if f.get(m) is not None]
            row[f"{m}_mean"] = statistics.fmean(values) if values else None
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(row)
    return out


def write_outputs(fits: Sequence[dict[str, Any]], out_dir: Path, title: str) -> None:
    """``curve_seeds.csv`` (the fits), ``curve.csv`` (:func:`summarize`) and ``curve.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / SEEDS_CSV, fits)
    summary = summarize(fits)
    _write_csv(out_dir / CURVE_CSV, summary)
    plot_curve(summary, out_dir / PLOT, title)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(
            {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        )


def _series(summary: Sequence[dict[str, Any]], metric: str) -> tuple[list, list, list]:
    """(sizes, means, standard deviations) of a metric where it is defined."""
    points = [(r["questions"], r[f"{metric}_mean"], r[f"{metric}_std"] or 0.0)
              for r in summary if r.get(f"{metric}_mean") is not None]  # fmt: skip
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def plot_curve(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels against training questions (log x): best-of-N accuracy of the head's argmax and weighted vote
    (bands: ±1 standard deviation over seeds) next to majority voting and the oracle at the same N, and the
    within-question (and global) AUROC over the 0.5 of chance."""
    n = max(
        int(k.removesuffix("_mean").split("@")[1])
        for k in summary[0]
        if k.startswith("maj@") and k.endswith("_mean")
    )
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    acc, roc = fig.subplots(1, 2)
    # (label, color, line style, marker): the references do not depend on the head (one validation split)
    styles = {f"oracle@{n}": (f"oracle@{n}", "black", "--", ""), f"maj@{n}": (f"majority vote@{n}", "gray", ":", ""),
              f"mean@{n}": ("one sample (mean)", "C2", "-.", ""), f"swift@{n}": (f"SWIFT argmax@{n}", "C0", "-", "o"),
              f"swift_vote@{n}": (f"SWIFT weighted vote@{n}", "C1", "-", "s")}  # fmt: skip
    for metric, style in styles.items():
        _band(acc, summary, metric, *style)
    acc.set_ylabel(f"accuracy on the validation questions (best of {n})")
    for metric, label, color in (
        ("within_auroc", "within-question AUROC", "C0"),
        ("auroc", "global AUROC", "C3"),
    ):
        _band(roc, summary, metric, label, color, "-", "o")
    roc.axhline(0.5, color="gray", linestyle=":", label="chance")
    roc.set_ylabel("validation AUROC of the head's reward")
    for ax in (acc, roc):
        ax.set_xscale("log")
        sizes = [r["questions"] for r in summary]
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training questions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seeds = max(r["seeds"] for r in summary)
    fig.suptitle(f"{title}; mean ± 1 sd over {seeds} seeds", fontsize=10)
    fig.savefig(path, dpi=120)


def _band(
    ax, summary, metric: str, label: str, color: str, style: str, marker: str
) -> None:
    """A metric's mean over seeds against training questions, with a band of ±1 standard deviation."""
    xs, ys, sds = _series(summary, metric)
    if not xs:
        return
    ax.plot(xs, ys, marker=marker, color=color, linestyle=style, label=label)
    if any(sd > 0 for sd in sds):
        lo = [
            max(y - s, 0.0) for y, s in zip(ys, sds, strict=True)
        ]  # (accuracies and AUROCs lie in [0, 1])
        hi = [min(y + s, 1.0) for y, s in zip(ys, sds, strict=True)]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15)


def cmd_curve(args: argparse.Namespace, config: TrainConfig) -> None:
    """``lm-eval-swift train --curve ...``: the curve of ``config`` (features cached in the user cache unless
    ``--cache-dir`` says where) into ``--out``; prints the per-size means ± standard deviations."""
    check_sizes(args.curve)
    if config.cache_dir is None:
        config = replace(config, cache_dir=user_cache_dir() / "features")
    fits = learning_curve(
        args.rollouts, args.base_model, args.out, args.curve, config, args.curve_seeds
    )
    summary = summarize(fits)
    n = max(int(k.split("@")[1]) for k in fits[0] if k.startswith("maj@"))
    shown = ("within_auroc", "auroc", f"swift@{n}", f"swift_vote@{n}", f"maj@{n}")
    print(
        f"learning curve in {args.out} ({CURVE_CSV}, {SEEDS_CSV}, {PLOT}); mean ± sd over seeds:"
    )
    for row in summary:
        cells = "  ".join(f"{m} {_fmt(row, m)}" for m in shown)
        print(f"{row['questions']:>6} questions: {cells}")


def _fmt(row: dict[str, Any], metric: str) -> str:
    mean, sd = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    return f"{mean:.3f}" + ("" if sd is None else f"±{sd:.3f}")
