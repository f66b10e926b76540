"""Best-of-N curves: accuracy vs N (log2 axis) per selector, one subplot per model (and task)."""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Iterable, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lm_eval_swift.reports.leaderboard import leaderboard


POWERS_OF_TWO = tuple(
    2**i for i in range(13)
)  # k = 1 .. 4096; the files' N bounds what is drawn
TITLE_WIDTH = 44  # characters per title line over a 5.5-inch panel
REFERENCE_STYLES = {
    "oracle": {"color": "black", "linestyle": "--"},
    "maj": {"color": "gray", "linestyle": ":"},
}


def plot_bon_curves(
    files: Iterable[str | os.PathLike],
    out_png: str | os.PathLike,
    estimator: str = "first",
    *,
    ks: Sequence[int] = POWERS_OF_TWO,
    subsets: int = 64,
    seed: int = 0,
    etas: Sequence[float] = (),
) -> list[Axes]:
    """Draw one curve per selector row that has at least two values of k (oracle dashed, majority dotted), with
    a standard-error band, for each model of ``files`` (as :func:`leaderboard.leaderboard` reads them); save a
    PNG and return the subplots' Axes (one per model and task)."""
    board = leaderboard(files, ks, estimator, subsets=subsets, seed=seed, etas=etas)
    groups = board.groups
    fig = Figure(figsize=(5.5 * len(groups), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, len(groups), squeeze=False)[0])
    for ax, group in zip(axes, groups, strict=True):
        for row in board.rows:
            points = sorted(
                (k, c) for (r, k), c in board.cells[group].items() if r == row
            )
            if len(points) < 2:
                continue
            xs = [k for k, _ in points]
            ys = [c.value for _, c in points]
            (line,) = ax.plot(
                xs, ys, marker="o", label=row, **REFERENCE_STYLES.get(row, {})
            )
            errs = [c.stderr for _, c in points]
            if not any(math.isnan(e) for e in errs):
                lo = [y - e for y, e in zip(ys, errs, strict=True)]
                hi = [y + e for y, e in zip(ys, errs, strict=True)]
                ax.fill_between(
                    xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples per question)")
        ax.set_ylabel("accuracy")
        ax.set_title(panel_title(board.label(group)), fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Best-of-N (estimator: {board.estimator})")
    fig.savefig(out_png, dpi=120)
    return axes


def panel_title(label: str, width: int = TITLE_WIDTH) -> str:
    """``label`` on lines of at most ``width`` characters (model and task on lines of their own when it is long),
    so that it fits over its panel."""
    parts = label.split(" / ") if len(label) > width else [label]
    return "\n".join(
        textwrap.fill(part, width, break_long_words=True, break_on_hyphens=False)
        for part in parts
    )


def cmd_plot(args: argparse.Namespace) -> None:
    """Write the best-of-N curves of ``args.files`` to ``args.output``."""
    axes = plot_bon_curves(
        args.files,
        args.output,
        args.estimator,
        subsets=args.subsets,
        seed=args.seed,
        etas=args.eta,
    )
    print(
        f"Wrote {args.output} ({sum(len(ax.get_lines()) for ax in axes)} curves, {len(axes)} panels)"
    )
