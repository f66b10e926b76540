"""The selectors as lm-eval filters, registered from :data:`~lm_eval_swift.bon.selectors.SELECTORS` in one loop,
and lm-eval's ``filter_list`` of a best-of-N task (one filter pipeline per row and k)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from lm_eval_swift.bon.rows import BON_KS, Row, row_ks
from lm_eval_swift.bon.selectors import FILTER_NAMES, SELECTORS, Selector


class BestOfNFilter(Filter):
    """Applies ``selector`` to the first ``k`` responses of each document (all of them when k is None)."""

    selector: Selector

    def __init__(self, k: int | None = None, **selector_kwargs) -> None:
        self.k = None if k is None else int(k)
        self.selector_kwargs = selector_kwargs

    def apply(self, resps, docs):
        return [
            type(self).selector(list(rs)[: self.k], **self.selector_kwargs)
            for rs in resps
        ]


def _filter_class(selector: Selector) -> type[BestOfNFilter]:
    """``weighted_vote`` -> class ``WeightedVoteFilter`` applying it."""
    name = "".join(part.title() for part in selector.__name__.split("_")) + "Filter"
    return type(
        name,
        (BestOfNFilter,),
        {
            "selector": staticmethod(selector),
            "__doc__": f"lm-eval filter of :func:`~{selector.__module__}.{selector.__name__}`.",
            "__module__": __name__,
        },
    )


FILTERS: dict[str, type[BestOfNFilter]] = {}
"""Selector name -> its filter class, registered under each of the selector's filter names (and a module attribute
of its own name, ``FirstFilter``, ..., which the ``lm_eval.filters`` entry points in pyproject name)."""
for _name, _selector in SELECTORS.items():
    _cls = FILTERS[_name] = _filter_class(_selector)
    globals()[_cls.__name__] = _cls
    for _filter_name in FILTER_NAMES[_name]:
        register_filter(_filter_name)(FILTERS[_name])


def filter_list(
    table_rows: Mapping[str, Row], n: int, ks: Sequence[int] = BON_KS
) -> list[dict[str, Any]]:
    """lm-eval's ``filter_list``: one filter pipeline per row and k, named ``<row>@<k>`` (``first`` alone), each
    applying the row's selector to the first k of the N responses."""
    out = []
    for row, (selector, kwargs) in table_rows.items():
        for k in row_ks(row, n, ks, selector):
            step = {"function": FILTER_NAMES[selector][0], **kwargs}
            if row not in ("first", "mean"):
                step["k"] = k
            out.append(
                {"name": row if row == "first" else f"{row}@{k}", "filter": [step]}
            )
    return out
