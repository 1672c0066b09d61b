"""Terminal tables in narrow terminals: long names shortened from the middle (distinct names stay distinct),
numbers never cut.

Rich cuts a cell that does not fit with an ellipsis at its end, so ``features.4.running_mean`` and
``features.4.running_var`` both became ``features.4.runni…`` in 80 columns, and ``7.63e-06`` became
``7.63e…``. The commands instead shorten their name column with :func:`short_names` to the width the
other columns leave (:func:`fit_names`), and give every other column :data:`KEEP` (fold, never cut).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

__all__ = ["ELLIPSIS", "MIN_NAME", "KEEP", "NUMBER", "short_name", "short_names", "table_width", "fit_names"]

ELLIPSIS = "…"
# A name column is never shortened below this many characters (12 keep "features…ean" readable).
MIN_NAME = 12
# Column options for text that may wrap (at spaces, else folded), never be cut: names, ops, notes.
KEEP: dict[str, Any] = {"overflow": "fold"}
# Column options for numbers and short codes (dtype): kept on one line; folded only when a table cannot
# fit at all, never cut.
NUMBER: dict[str, Any] = {"overflow": "fold", "no_wrap": True}


def short_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, shortened from the middle: its start and its end (where
    layer names differ: ``features.4…ng_mean``) around an ellipsis. Unchanged when it fits."""
    if len(name) <= width:
        return name
    if width <= 1:
        return name[:max(0, width)]
    keep = width - 1
    tail = keep // 2
    head = keep - tail
    return name[:head] + ELLIPSIS + (name[-tail:] if tail else "")


def _tails(keep: int) -> list[int]:
    """Tail lengths to try for ``keep`` kept characters: the even split first, then ever more uneven."""
    mid = keep // 2
    order = [mid]
    for d in range(1, keep + 1):
        order += [t for t in (mid - d, mid + d) if 0 <= t <= keep]
    return order


def short_names(names: Sequence[str], width: int) -> list[str]:
    """Every name in about ``width`` characters, shortened from the middle, each one still telling its name
    apart from every other: where ``features.4.running_mean`` and ``features.8.running_mean`` would both be
    ``features…ning_mean``, the cut moves (``features.4…ng_mean``), and where no cut at ``width`` tells a name
    apart it keeps more characters. All names are then shortened to the longest one's width (a column is
    that wide anyway). Distinct names always stay distinct; equal names stay equal."""
    uniq = sorted(set(names))

    def ambiguous(head: str, tail: str, width: int) -> bool:
        lo = bisect.bisect_left(uniq, head)
        hi = bisect.bisect_left(uniq, head + "\U0010ffff")
        return sum(1 for m in uniq[lo:hi] if len(m) > width and m.endswith(tail)) > 1

    def shorten(name: str, width: int) -> str | None:
        if len(name) <= width:
            return name
        keep = width - 1
        for t in _tails(keep):
            head, tail = name[:keep - t], name[len(name) - t:]
            if not ambiguous(head, tail, width):
                return head + ELLIPSIS + tail
        return None

    def fit(name: str, width: int) -> str:
        while True:
            out = shorten(name, width)
            if out is not None:
                return out
            width += 1  # at len(name) the name itself comes back

    width = max(2, width)
    first = [fit(n, width) for n in names]
    column = max((len(s) for s in first), default=width)
    return first if column <= width else [fit(n, column) for n in names]


def table_width(table: Table, console: Console) -> int:
    """The width ``table`` takes when nothing in it wraps (its natural width)."""
    return Measurement.get(console, console.options.update_width(1 << 16), table).maximum


def fit_names(make: Callable[[list[str]], Table], names: Sequence[str], console: Console) -> Table:
    """The table ``make(names)`` builds, with the names shortened (:func:`short_names`) by as much as it is
    wider than the console, down to :data:`MIN_NAME` characters; ``make`` must put the names in a column
    with :data:`KEEP`, so a table that still does not fit wraps rather than cuts."""
    names = list(names)
    table = make(names)
    excess = table_width(table, console) - console.width
    if excess <= 0 or not names:
        return table
    longest = max(len(n) for n in names)
    target = max(MIN_NAME, longest - excess)
    if target >= longest:
        return table
    return make(short_names(names, target))
