"""HTML report: a campaign database (and its hardened twin, when recorded) -> one self-contained page.

The page runs no script and loads nothing: plots are matplotlib figures inlined as SVG, styles are
inline, and a Content-Security-Policy forbids everything else, so it opens offline and from any
mailbox. Every string that comes from the model, the data or the database is escaped with
:func:`html.escape`; matplotlib escapes the text it writes into SVG, and each SVG is stripped of
comments and metadata and checked once more before it is inlined.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from onnxfi import __version__
from onnxfi.ber import ber_summary
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import (
    FLAG_LABELS,
    FLAGS,
    OUTCOME_LABELS,
    decision_words,
    flag_description,
    shown_flags,
)
from onnxfi.plan import Plan, file_sha256
from onnxfi.store import Store, StoredCampaign, load_campaign
from onnxfi.summary import aggregate, layer_bit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["render_report", "write_report", "preflight", "inline_svg", "CSP"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_TOP_LAYERS = 30  # bars in the per-layer chart
_HEAT_LAYERS = 40  # rows of the layer x bit heatmap
_TABLE_ROWS = 500  # rows of the per-layer table
_EXAMPLES = 15  # rows of the example-experiments table

# presentation only: keyed by the names of onnxfi.outcomes.OUTCOMES
_OUTCOME_COLORS = {
    "masked": "#b8c2cc", "tolerable": "#7fb3d5", "sdc1": "#f0a04b", "sdc5": "#d35400",
    "critical": "#c0392b", "due": "#8e44ad", "crash": "#2c3e50",
}
_RATE_COLORS = {"sdc1": "#d35400", "due": "#8e44ad", "critical": "#c0392b"}
_GROUPS = (  # outcome groups of the distribution plots
    ("no decision change", ("masked", "tolerable"), "#7fb3d5"),
    ("SDC", ("sdc1", "sdc5", "critical"), "#d35400"),
    ("DUE / crash", ("due", "crash"), "#8e44ad"),
)
_UNSAFE_SVG = re.compile(r"<\s*/?\s*(script|foreignobject|iframe|object|embed|a)\b|\son\w+\s*=|javascript:", re.I)
_RC: dict[Any, Any] = {
    "svg.fonttype": "path",  # glyphs as paths: the page needs no font
    "svg.hashsalt": "onnxfi",  # stable ids: the same database gives the same page
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "text.usetex": False,
}


# ------------------------------------------------------------------------------------------- data


@dataclass
class _Campaign(StoredCampaign):
    """One campaign database, read into memory, with its summary."""

    summary: dict[str, Any] = field(default_factory=dict)


def _load(db_path: str | os.PathLike[str]) -> _Campaign:
    stored = load_campaign(db_path)
    if _is_ber(stored.plan):
        return _Campaign(**vars(stored), summary=ber_summary(stored.plan, stored.rows, clean=stored.clean))
    return _Campaign(**vars(stored), summary=aggregate(stored.plan, stored.rows))


def _is_ber(plan: Plan) -> bool:
    """A bit error rate campaign: its result is the metric and the outcome rates per rate, not per fault."""
    return plan.fault_model == "ber"


def _model_path(camp: _Campaign) -> str:
    """The model the campaign ran (a comparison campaign runs the original's plan on another model)."""
    return str(camp.config.get("model_path") or camp.plan.model)


def _load_compare(camp: _Campaign) -> tuple[_Campaign | None, str | None]:
    """The hardened model's campaign recorded under the ``compare`` key, or why it cannot be shown."""
    info = camp.compare
    if info is None:
        return None, None
    if not isinstance(info, dict) or not info.get("db"):
        return None, "the database records a comparison, but not the path of the other database"
    given = Path(str(info["db"]))
    # A relative path was relative to wherever `analyze` ran; next to this database is the other guess.
    candidates = [given, camp.path.parent / given.name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None, f"comparison database not found: {given}"
    try:
        return _load(found), None
    except OnnxfiError as e:
        return None, f"comparison database not readable: {e}"


def _load_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise OnnxfiError(f"comparison JSON not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OnnxfiError(f"{p}: not JSON ({e})") from None


# ------------------------------------------------------------------------------------ formatting


class _Html(str):
    """Markup built in this module from escaped parts: inserted as is."""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _code(value: Any) -> _Html:
    return _Html(f"<code>{_e(value)}</code>")


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(r: dict[str, Any] | None) -> str:
    if not r or not _finite(r.get("rate")):
        return "–"
    return f"{100 * r['rate']:.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 200 else text[:199] + "…"
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    def cell(v: Any) -> str:
        return v if isinstance(v, _Html) else _e(_fmt(v))

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    attr = f' class="{_e(cls)}"' if cls else ""
    return f'<div class="tw"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{_e(k)}</th><td>{v if isinstance(v, _Html) else _e(_fmt(v))}</td></tr>" for k, v in pairs
    )
    return f'<table class="kv"><tbody>{cells}</tbody></table>'


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>{body}</details>"


def _label(name: Any, width: int = 44) -> str:
    """A model-supplied name as plot text: printable, shortened in the middle, never parsed as math."""
    s = "".join(c if c.isprintable() else "?" for c in str(name))
    if len(s) > width:
        s = s[: width // 2 - 1] + "…" + s[-(width // 2):]
    return s.replace("$", r"\$")


# --------------------------------------------------------------------------------------- figures


def inline_svg(svg: str, prefix: str, alt: str) -> str:
    """matplotlib's SVG made fit to inline: no XML header, comments or metadata; ids unique in the page."""
    start = svg.find("<svg")
    if start < 0:
        raise RuntimeError("matplotlib wrote no <svg> element")
    svg = svg[start:]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))

    def rename(m: re.Match[str]) -> str:
        return m.group(1) + (prefix + m.group(2) if m.group(2) in ids else m.group(2))

    svg = re.sub(r'(\bid="|href="#|url\(#)([^")]+)', rename, svg)
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{_e(alt)}" ', 1)
    if _UNSAFE_SVG.search(svg):  # matplotlib escapes text; this guards against a change there
        raise RuntimeError("refusing to inline an SVG with active content")
    return svg.strip()


def _matplotlib_figure() -> type[Figure]:
    """matplotlib's Figure class; a one-line error when matplotlib (a core dependency) cannot be imported."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise OnnxfiError(
            f"the HTML report needs matplotlib, a dependency of onnxfi that does not import here ({e}): "
            "pip install 'matplotlib>=3.7'"
        ) from None
    return Figure


def preflight(out_path: str | os.PathLike[str]) -> None:
    """Raise the one-line :class:`OnnxfiError` that :func:`write_report` would raise at the end: matplotlib
    missing, ``out_path`` a folder, its folder missing or not writable. Called before a campaign runs."""
    _matplotlib_figure()
    out = Path(out_path)
    folder = out.parent
    if out.is_dir():
        raise OnnxfiError(f"cannot write the HTML report {out}: it is a folder")
    if not folder.is_dir():
        raise OnnxfiError(f"cannot write the HTML report {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OnnxfiError(f"cannot write the HTML report {out}: permission denied")


class _Figures:
    """Builds matplotlib figures (no pyplot, no GUI backend) and turns them into inline SVG."""

    def __init__(self) -> None:
        self._figure = _matplotlib_figure()
        self.count = 0

    def new(self, width: float, height: float) -> Figure:
        return self._figure(figsize=(width, height), layout="constrained")

    def svg(self, fig: Figure, alt: str, caption: str = "") -> str:
        self.count += 1
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = inline_svg(buf.getvalue(), f"f{self.count}-", alt)
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        return f"<figure>{svg}{cap}</figure>"


@contextmanager
def _matplotlib_settings() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC), warnings.catch_warnings():
        # Names with characters outside DejaVu Sans draw a box; that is no reason to warn.
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        yield


def _pct_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _err(entries: Sequence[dict[str, Any]]) -> np.ndarray:
    rates = np.array([e["rate"] for e in entries], dtype=float)
    lo = np.array([e["lo"] for e in entries], dtype=float)
    hi = np.array([e["hi"] for e in entries], dtype=float)
    return np.clip(np.vstack([rates - lo, hi - rates]), 0.0, None)


def _plot_outcomes(figs: _Figures, outcomes: dict[str, int]) -> str:
    total = sum(outcomes.values())
    fig = figs.new(10, 1.15)
    ax = fig.subplots()
    left = 0.0
    for name, count in outcomes.items():
        if not count:
            continue
        ax.barh(0, count / total, left=left, color=_OUTCOME_COLORS.get(name, "#999999"),
                label=f"{OUTCOME_LABELS.get(name, name)} {count} ({100 * count / total:.1f}%)")
        left += count / total
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.grid(False)
    _pct_axis(ax.xaxis)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, frameon=False)
    return figs.svg(fig, "outcome breakdown", "Share of experiments by outcome (each experiment has exactly one).")


def _plot_layers(figs: _Figures, layers: Sequence[dict[str, Any]], conf_pct: int) -> str:
    top = list(layers[:_TOP_LAYERS])
    y = np.arange(len(top))[::-1].astype(float)
    fig = figs.new(10, 0.3 * len(top) + 1.3)
    ax = fig.subplots()
    for off, key in ((0.2, "sdc1"), (-0.2, "due")):
        entries = [e[key] for e in top]
        ax.barh(y + off, [e["rate"] for e in entries], height=0.38, xerr=_err(entries), capsize=2,
                color=_RATE_COLORS[key], ecolor="#333333", error_kw={"elinewidth": 0.8}, label=FLAG_LABELS[key])
    ax.set_yticks(y, [_label(e["key"]) for e in top])
    ax.set_ylim(-0.7, len(top) - 0.3)
    hi = max([e["sdc1"]["hi"] for e in top] + [e["due"]["hi"] for e in top] + [0.05])
    ax.set_xlim(0, min(1.0, hi * 1.05))
    _pct_axis(ax.xaxis)
    ax.set_xlabel(f"rate per fault in the layer ({conf_pct}% interval)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", visible=False)
    return figs.svg(fig, "per-layer vulnerability", f"Layers by SDC-1 rate, top {len(top)} of {len(layers)}; "
                    "bars are the point estimates, whiskers the confidence intervals.")


def _layer_bit_matrix(rows: Sequence[dict[str, Any]], layers: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """SDC-1 rate per (layer, bit), layers as rows, bits (most significant first) as columns; NaN: not sampled."""
    cells = {(e["site"], int(e["bit"])): e["rate"] for e in layer_bit(rows, 0.95, ("sdc1",))}  # rates only
    bits = sorted({b for _, b in cells}, reverse=True)
    mat = np.full((len(layers), len(bits)), np.nan)
    for i, site in enumerate(layers):
        for j, b in enumerate(bits):
            if (site, b) in cells:
                mat[i, j] = cells[(site, b)]
    return mat, bits


def _plot_heatmap(figs: _Figures, rows: Sequence[dict[str, Any]], layers: Sequence[dict[str, Any]]) -> str:
    import matplotlib

    with_bits = {r["site"] for r in rows if r["bit"] is not None}
    names = [str(e["key"]) for e in layers if e["key"] in with_bits][:_HEAT_LAYERS]
    mat, bits = _layer_bit_matrix(rows, names)
    fig = figs.new(10, 0.24 * len(names) + 1.6)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="none")
    ax.set_xticks(np.arange(len(bits)), [str(b) for b in bits], fontsize=7)
    ax.set_yticks(np.arange(len(names)), [_label(s) for s in names], fontsize=7)
    ax.set_xlabel("bit (0 = least significant)")
    ax.grid(False)
    bar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.01)
    bar.set_label("SDC-1 rate")
    _pct_axis(bar.ax.yaxis)
    return figs.svg(fig, "layer by bit SDC-1 heatmap",
                    f"SDC-1 rate per layer and bit (top {len(names)} layers by SDC-1); grey cells had no experiment. "
                    "Each cell holds only a few experiments: read the per-layer and per-bit intervals for precision.")


def _bit_axes(ax: Axes, series: Sequence[tuple[str, Sequence[dict[str, Any]], str, str]], conf_pct: int) -> None:
    """One line per series over the bits, with the interval as a whisker at each bit (series side by side)."""
    shown = [s for s in series if s[1]]
    for i, (label, entries, color, style) in enumerate(shown):
        ordered = sorted(entries, key=lambda e: int(e["key"]))
        xs = np.array([int(e["key"]) for e in ordered], dtype=float) + 0.5 * (i - (len(shown) - 1) / 2) / len(shown)
        bars = ax.errorbar(xs, [e["rate"] for e in ordered], yerr=_err(ordered), fmt=style, color=color,
                           marker="o", markersize=3, linewidth=1.2, elinewidth=0.8, capsize=0, label=label)
        for line in bars.lines[2]:
            line.set_alpha(0.35)  # whiskers lighter than the estimates they qualify
    ax.set_ylim(0, 1)
    _pct_axis(ax.yaxis)
    ax.invert_xaxis()
    ax.set_xlabel("bit (0 = least significant; fp32: 31 sign, 30-23 exponent, 22-0 mantissa)")
    ax.set_ylabel(f"rate ({conf_pct}% interval)")
    ax.legend(loc="upper right")


def _plot_bits(figs: _Figures, bits: Sequence[dict[str, Any]], conf_pct: int) -> str:
    fig = figs.new(10, 3.6)
    ax = fig.subplots()
    _bit_axes(ax, [(FLAG_LABELS[key], [{"key": e["key"], **e[key]} for e in bits], _RATE_COLORS[key], "-")
                   for key in ("sdc1", "critical", "due")], conf_pct)
    return figs.svg(fig, "per-bit vulnerability", "Outcome rate per flipped bit, over all layers.")


# (key in the row's metrics, or a row field; title; transform)
_DISTRIBUTIONS: tuple[tuple[str, str, Callable[[float], float | None]], ...] = (
    ("task_value", "task metric", lambda v: v),
    ("images_changed", "fraction of images whose decision changed", lambda v: v),
    ("mean_entropy", "mean predictive entropy (uncertainty)", lambda v: v),
    ("mean_msp", "mean max softmax probability (confidence)", lambda v: v),
    ("ece", "expected calibration error", lambda v: v),
    ("err_mean_abs", "log10 mean |output error| (masked excluded)", lambda v: math.log10(v) if v > 0 else None),
    ("time_s", "experiment time (ms)", lambda v: 1000 * v),
)


def _metric_values(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[dict[str, list[float]], int]]:
    """Per metric: finite (transformed) values by outcome group, and how many were not finite."""
    group_of = {o: g for g, outcomes, _ in _GROUPS for o in outcomes}
    out: dict[str, tuple[dict[str, list[float]], int]] = {}
    for key, _, transform in _DISTRIBUTIONS:
        values: dict[str, list[float]] = defaultdict(list)
        bad = 0
        seen = False
        for r in rows:
            v = r[key] if key in ("images_changed", "time_s") else (r.get("metrics") or {}).get(key)
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            seen = True
            t = transform(float(v)) if math.isfinite(v) else None
            if t is None or not math.isfinite(t):
                bad += 1
                continue
            values[group_of.get(r["outcome"], "DUE / crash")].append(t)
        if seen:
            out[key] = (values, bad)
    return out


def _plot_distributions(figs: _Figures, dists: dict[str, tuple[dict[str, list[float]], int]],
                        clean: dict[str, Any]) -> str:
    keys = [k for k, _, _ in _DISTRIBUTIONS if k in dists and any(dists[k][0].values())]
    ncols = 3
    nrows = (len(keys) + ncols - 1) // ncols
    fig = figs.new(10, 2.5 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    titles = {k: t for k, t, _ in _DISTRIBUTIONS}
    titles["task_value"] = f"task metric: {clean.get('metric') or 'value'}"
    for ax, key in zip(axes, keys):
        values, _ = dists[key]
        everything = [v for vs in values.values() for v in vs]
        lo, hi = min(everything), max(everything)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 25)
        groups = [(name, values[name], color) for name, _, color in _GROUPS if values.get(name)]
        # stepfilled: one polygon per group instead of one rectangle per bin (much faster to lay out and draw)
        ax.hist([g[1] for g in groups], bins=edges, stacked=True, histtype="stepfilled",
                color=[g[2] for g in groups], label=[g[0] for g in groups])
        if key == "task_value" and _finite(clean.get("value")):
            ax.axvline(float(clean["value"]), color="black", linestyle="--", linewidth=1, label="clean model")
        ax.set_title(_label(titles[key], 60), fontsize=9)
        ax.set_ylabel("experiments")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if keys:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    return figs.svg(fig, "metric distributions", "Per-experiment metrics on the faulty model, stacked by outcome.")


def _plot_compare_bits(figs: _Figures, before: _Campaign, after: _Campaign, conf_pct: int) -> str:
    fig = figs.new(10, 3.6)
    ax = fig.subplots()
    series = []
    for camp, tag, style in ((before, "before", "-"), (after, "after", "--")):
        for key in ("sdc1", "due"):
            series.append((f"{FLAG_LABELS[key]} {tag}", [{"key": e["key"], **e[key]} for e in camp.summary["bits"]],
                           _RATE_COLORS[key], style))
    _bit_axes(ax, series, conf_pct)
    return figs.svg(fig, "per-bit before and after hardening",
                    "Per-bit rates of the original (solid) and the hardened model (dashed).")


def _plot_compare_layers(figs: _Figures, before: _Campaign, after: _Campaign, conf_pct: int) -> str:
    after_by = {e["key"]: e for e in after.summary["layers"]}
    top = [e for e in before.summary["layers"] if e["key"] in after_by][:_TOP_LAYERS]
    y = np.arange(len(top))[::-1].astype(float)
    fig = figs.new(10, 0.3 * len(top) + 1.3)
    ax = fig.subplots()
    pairs = ((0.2, "before", [e["sdc1"] for e in top], "#d35400"),
             (-0.2, "after", [after_by[e["key"]]["sdc1"] for e in top], "#27ae60"))
    for off, name, entries, color in pairs:
        ax.barh(y + off, [e["rate"] for e in entries], height=0.38, xerr=_err(entries), capsize=2, color=color,
                ecolor="#333333", error_kw={"elinewidth": 0.8}, label=f"SDC-1 {name}")
    ax.set_yticks(y, [_label(e["key"]) for e in top])
    ax.set_ylim(-0.7, len(top) - 0.3)
    _pct_axis(ax.xaxis)
    ax.set_xlabel(f"SDC-1 rate ({conf_pct}% interval)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", visible=False)
    return figs.svg(fig, "per-layer before and after hardening",
                    f"SDC-1 per layer before and after hardening (the original's top {len(top)} layers).")


def _ber_err(entries: Sequence[dict[str, Any]], value: str) -> np.ndarray:
    """Whiskers from ``lo``/``hi`` around ``value``; none where the interval is unknown (fewer than two runs)."""
    mid = np.array([e[value] for e in entries], dtype=float)
    lo = np.array([e["lo"] for e in entries], dtype=float)
    hi = np.array([e["hi"] for e in entries], dtype=float)
    return np.nan_to_num(np.clip(np.vstack([mid - lo, hi - mid]), 0.0, None), nan=0.0)


def _plot_ber(figs: _Figures, series: Sequence[tuple[str, dict[str, Any]]], conf_pct: int) -> str:
    """Left: the task metric's mean vs bit error rate, one line per model; right: SDC-1 and DUE rates."""
    fig = figs.new(10, 3.8)
    left, right = fig.subplots(1, 2)
    metric = str(series[0][1].get("metric") or "metric")
    colors = ("#2a5d8f", "#27ae60", "#8e44ad", "#d35400")
    for i, (name, summary) in enumerate(series):
        color, style = colors[i % len(colors)], ("-", "--", ":", "-.")[i % 4]
        pts = [e for e in summary.get("ber") or [] if _finite(e["metric"]["mean"])]
        if pts:
            metrics = [e["metric"] for e in pts]
            left.errorbar([e["rate"] for e in pts], [m["mean"] for m in metrics], yerr=_ber_err(metrics, "mean"),
                          fmt=style, color=color, marker="o", markersize=3, linewidth=1.2, elinewidth=0.8, capsize=2,
                          label=_label(name))
        clean = summary.get("clean_value")
        if _finite(clean):
            left.axhline(float(clean), color=color, linestyle=":", linewidth=0.9, label=f"clean {_label(name, 30)}")
        for key in ("sdc1", "due"):
            rated = [e for e in summary.get("ber") or [] if _finite(e["rates"][key]["rate"])]
            if rated:
                entries = [e["rates"][key] for e in rated]
                right.errorbar([e["rate"] for e in rated], [r["rate"] for r in entries], yerr=_ber_err(entries, "rate"),
                               fmt=style, color=_RATE_COLORS[key], marker="o" if i == 0 else "s", markersize=3, linewidth=1.2, elinewidth=0.8,
                               capsize=2, label=f"{FLAG_LABELS[key]} {_label(name, 30)}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("bit error rate (probability that a stored weight bit flips)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
    left.set_ylabel(_label(f"{metric} (mean, {conf_pct}% interval)", 60))
    right.set_ylim(0, 1.02)
    _pct_axis(right.yaxis)
    right.set_ylabel(f"share of experiments ({conf_pct}% interval)")
    return figs.svg(fig, f"{metric} and outcome rates vs bit error rate",
                    f"Left: mean {metric} over the experiments at each bit error rate, whiskers the Student t "
                    "interval across experiments (dotted: the clean model). Right: share of experiments with an SDC-1 "
                    "or a DUE, Wilson intervals" + ("; one line style per model." if len(series) > 1 else "."))


# --------------------------------------------------------------------------------------- sections


_DESIGNS = {
    "proportional": "every fault of the space equally likely; the sample rate is the model's rate",
    "per-stratum": "equal faults per (site, bit) stratum; rates re-weighted by stratum population",
    "adaptive": "Neyman allocation over bits in rounds; rates re-weighted by stratum population",
}


@dataclass
class _Section:
    anchor: str
    title: str
    body: str


def _conf_pct(camp: _Campaign) -> int:
    return int(round(100 * camp.summary["confidence"]))


def _ber_headline(camp: _Campaign) -> str:
    s = camp.summary
    entries = s.get("ber") or []
    cards: list[tuple[str, str]] = [
        ("experiments", f"{s['progress']['stored']:,} of {s['progress']['planned']:,}"),
        ("bit error rates", f"{len(entries)} ({entries[0]['rate']:g} … {entries[-1]['rate']:g})" if entries else "–"),
        ("weight bits", f"{camp.plan.population:,}"),
        (f"clean {s['metric']}", _fmt(s.get("clean_value"))),
    ]
    for e in entries[-1:]:
        m = e["metric"]
        cards.append((f"{s['metric']} at BER {e['rate']:g}", _fmt(m["mean"]) if _finite(m["mean"]) else "–"))
    body = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
                   for k, v in cards)
    return f'<div class="cards">{body}</div>'


def _headline(camp: _Campaign) -> str:
    s, clean = camp.summary, camp.clean
    prog = s.get("progress") or {}
    per = (s.get("per_inference") or {}).get("sdc1")
    cards = [
        ("experiments in the rates", f"{prog.get('used', s['experiments']):,} of {s['planned']:,}"),
        (f"SDC-1 per fault ({s.get('design', camp.plan.design)} design)", _pct(s["rates"]["sdc1"])),
        ("SDC-1 per inference", _pct(per)),
        ("critical", _pct(s["rates"]["critical"])),
        ("DUE (NaN/Inf)", _pct(s["rates"]["due"])),
        (f"clean {clean.get('metric') or 'metric'}", _fmt(clean.get("value"))),
    ]
    body = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
                   for k, v in cards)
    return f'<div class="cards">{body}</div>'


def _sites_by_kind(plan: Plan) -> dict[str, int]:
    kinds: dict[str, set[str]] = defaultdict(set)
    for st in plan.strata:
        kinds[st.kind].add(st.site)
    return {k: len(v) for k, v in sorted(kinds.items())}


def _summary_section(camp: _Campaign) -> _Section:
    plan, clean = camp.plan, camp.clean
    sites = _sites_by_kind(plan)
    golden = clean.get("golden_time_s")
    pairs: list[tuple[str, Any]] = [
        ("model", _code(Path(plan.model).name)),
        ("path", _code(plan.model)),
        ("sha256", _code(plan.model_sha256)),
        ("task", clean.get("task")),
        ("decision output", _code(clean.get("primary_output", "–"))),
        ("why this output", (clean.get("output_choice") or {}).get("reason")),
        (f"clean {clean.get('metric') or 'metric'}", clean.get("value")),
        ("eval data", _code(clean.get("data") or "seeded random inputs")),
        ("samples", clean.get("samples")),
        ("clean run time", f"{1000 * golden:.2f} ms" if _finite(golden) else None),
        ("fault sites", ", ".join(f"{n} {k}" for k, n in sites.items()) or "–"),
        ("fault space", f"{plan.population:,} faults in {len(plan.strata):,} strata (site × bit × fault model)"),
    ]
    warn = ""
    prog = camp.summary.get("progress") or {}
    if _is_ber(plan):
        pairs[-1] = ("fault space", f"{plan.population:,} stored bits of {len({st.site for st in plan.strata}):,} "
                                    "weight sites; each flips independently at the bit error rate")
        if not prog.get("complete"):
            warn = (f'<p class="warn">Partial campaign (interrupted or stopped early): {prog.get("stored", 0):,} of '
                    f'{prog.get("planned", 0):,} planned experiments stored. Every experiment is an independent '
                    "draw at its rate, so each rate's figures use all of its stored experiments, with wider "
                    "intervals.</p>")
    elif not prog.get("complete", camp.summary["experiments"] >= camp.summary["planned"]):
        left = (f' {prog["partial_rows"]:,} stored experiments of unfinished rounds are left out of the rates.'
                if prog.get("partial_rows") else "")
        warn = (f'<p class="warn">Partial campaign (interrupted or stopped early): {prog.get("rounds_complete", 0)} '
                f'of {prog.get("rounds", 0)} rounds complete; the rates use {prog.get("used", 0):,} of '
                f'{camp.summary["planned"]:,} planned experiments '
                f'({100 * float(prog.get("fraction", 0.0)):.1f}%). Each round samples the whole fault space, '
                f"so the rates estimate the model's, with wider intervals.{left}</p>")
    if clean.get("warning"):
        warn += f'<p class="warn">{_e(clean["warning"])}</p>'
    return _Section("summary", "Model", warn + _kv(pairs))


def _repro_section(camp: _Campaign) -> _Section:
    plan, cfg = camp.plan, camp.config
    sampled = len({(r["site"], r["bit"]) for r in camp.rows})
    total = len({(st.site, st.bit) for st in plan.strata})
    ber = plan.options.get("ber") or {}
    pairs: list[tuple[str, Any]] = [
        ("seed", plan.seed),
        ("design", f"{plan.design} ({_DESIGNS.get(plan.design, '')})") if not _is_ber(plan) else
        ("design", "bit error rate: per experiment, a Binomial(bits, rate) count of distinct weight bits drawn "
                   "uniformly from its seed and flipped together"),
        ("sampling", f"{plan.mode}: {plan.requested:,} requested, {len(plan.experiments):,} planned "
                     f"(margin {_fmt(plan.margin)}, confidence {plan.confidence:g}, p {plan.p:g})")
        if not _is_ber(plan) else
        ("sampling", f"{ber.get('per_rate', '?')} experiments at each of {len(ber.get('rates') or [])} rates, "
                     f"{len(plan.experiments):,} planned"),
        ("(site, bit) strata sampled", f"{sampled:,} of {total:,}") if not _is_ber(plan) else
        ("(site, bit) strata in the space", f"{total:,}"),
        ("execution paths", ", ".join(f"{p} {n:,}" for p, n in (camp.summary.get("paths") or {}).items()) or "–"),
        ("target", plan.target),
        ("fault models", ", ".join(plan.faults)),
        ("bits", "all bits of each dtype" if plan.bits is None else ", ".join(map(str, plan.bits))),
        ("plan options", _code(json.dumps(plan.options, default=str))),
        ("model sha256", _code(plan.model_sha256)),
        ("engine", _code(json.dumps({k: v for k, v in cfg.items() if k != "model_path"}, default=str))),
        ("versions", ", ".join(f"{k} {v}" for k, v in camp.versions.items())),
        ("database", _code(camp.path)),
    ]
    plan_file = Path(f"{camp.path}.plan.json")
    if plan_file.is_file():
        pairs.append(("plan file", _code(plan_file)))
    header = {k: v for k, v in plan.to_dict().items() if k not in ("experiments", "strata")}
    note = ("<p>The plan (every experiment's site, element, bit, fault and seed) is stored in the database; "
            "the same model file, options and seed give the same plan. One experiment is replayed with "
            f"{_code('onnxfi inject MODEL --from-plan PLAN.json --experiment ID -o faulty.onnx')}.</p>")
    plan_json = f"<pre>{_e(json.dumps(header, indent=2, default=str))}</pre>"
    return _Section("repro", "Reproducibility", _kv(pairs) + note + _details("plan header (JSON)", plan_json))


def _outcome_section(camp: _Campaign, figs: _Figures) -> _Section:
    s = camp.summary
    critical = camp.plan.options.get("critical", camp.config.get("critical", 0.01))
    raw = s.get("rates_raw", s["rates"])
    task = (camp.clean or {}).get("task")
    rows = [(flag_description(k, task, critical), f'{s["rates"][k]["k"]}/{s["rates"][k]["n"]}',
             _pct(s["rates"][k]), _pct(raw[k])) for k in shown_flags(task)]
    table = _table(["outcome", "sampled k/n", f"per fault, model's rate [{_conf_pct(camp)}% CI]",
                    "raw sample rate [CI]"], rows)
    per = (s.get("per_inference") or {}).get("sdc1")
    chart = _plot_outcomes(figs, s["outcomes"]) if s["experiments"] else "<p>No experiment stored yet.</p>"
    counts = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items() if v)
    note = (f"<p>Exclusive outcomes: {_e(counts or 'none')}. Flags overlap (a critical fault is also an SDC-1), "
            "so the rates need not add up. The model's rates estimate, for one fault drawn uniformly from the "
            f"fault space, the chance of each outcome ({_e(s.get('design', camp.plan.design))} design, "
            f"{_e(s['rates']['sdc1'].get('method', 'wilson'))} intervals, complete rounds only); the raw sample "
            "rate is k/n over every stored experiment, which a non-proportional design tilts.</p>")
    if per:
        note += (f"<p>Per inference: a fault changes the {_e(decision_words(task))} of {_e(_pct(per))} of eval "
                 "inferences (the mean over faults of the fraction of inferences changed).</p>")
    tok = (s.get("per_token") or {}).get("error_rate")
    if tok:
        note += (f"<p>Per token: a fault changes {_e(_pct(tok))} of the decoded tokens (edit distance over the "
                 "fault-free length, mean over faults).</p>")
    drop = (s.get("task_drop") or {}).get("map50")
    if drop:
        note += (f"<p>mAP@0.5 drop: a fault lowers the detector's mAP@0.5 by {_e(_pct(drop))} (absolute: clean - "
                 "faulty, a gain counts as 0; mean over faults).</p>")
    errors = Counter((r["outcome"], r["error"]) for r in camp.rows if r["error"])
    if errors:
        err_rows = [(outcome, n, _code(err)) for (outcome, err), n in errors.most_common(10)]
        note += _details(f"errors ({sum(errors.values())} experiments)",
                         _table(["outcome", "experiments", "message"], err_rows))
    return _Section("outcomes", "Outcomes", chart + table + note)


def _layer_section(camp: _Campaign, figs: _Figures) -> _Section:
    layers = camp.summary["layers"]
    if not layers:
        return _Section("layers", "Layers", "<p>No experiment stored yet.</p>")
    kind = {st.site: st.kind for st in camp.plan.strata}
    conf = _conf_pct(camp)
    rows = [(i, _code(e["key"]), kind.get(e["key"], "?"), e["n"], _pct(e["sdc1"]), _pct(e["sdc5"]),
             _pct(e["critical"]), _pct(e["due"]), e["crash"]["k"], f"{100 * e['images_changed_mean']:.2f}%")
            for i, e in enumerate(layers[:_TABLE_ROWS], 1)]
    table = _table(["#", "site", "kind", "n", f"SDC-1 [{conf}% CI]", "SDC-5", "critical", "DUE", "crashes",
                    "images changed"], rows, "num")
    more = f" (first {_TABLE_ROWS})" if len(layers) > _TABLE_ROWS else ""
    body = _plot_layers(figs, layers, conf) + _details(f"all {len(layers)} layers{more}", table, len(layers) <= 30)
    return _Section("layers", "Per-layer vulnerability", body)


def _bits_section(camp: _Campaign, figs: _Figures) -> _Section:
    bits = camp.summary["bits"]
    if not bits:
        return _Section("bits", "Bits", "<p>No bit-level fault in this campaign (value faults only).</p>")
    conf = _conf_pct(camp)
    rows = [(e["key"], e["n"], _pct(e["sdc1"]), _pct(e["critical"]), _pct(e["due"]), e["crash"]["k"]) for e in bits]
    table = _table(["bit", "n", f"SDC-1 [{conf}% CI]", "critical", "DUE", "crashes"], rows, "num")
    body = (_plot_heatmap(figs, camp.rows, camp.summary["layers"]) + _plot_bits(figs, bits, conf)
            + _details("per-bit table", table))
    return _Section("bits", "Layer × bit and per-bit profile", body)


def _distribution_section(camp: _Campaign, figs: _Figures) -> _Section:
    dists = _metric_values(camp.rows)
    if not any(any(v.values()) for v, _ in dists.values()):
        return _Section("metrics", "Metric distributions", "<p>No per-experiment metric stored.</p>")
    titles = {k: t for k, t, _ in _DISTRIBUTIONS}
    rows = []
    for key, (values, bad) in dists.items():
        allv = np.array([v for vs in values.values() for v in vs])
        stats = (float(allv.mean()), float(np.median(allv)), float(allv.min()), float(allv.max())) if allv.size \
            else (None, None, None, None)
        rows.append((titles[key], allv.size, *stats, bad))
    table = _table(["metric", "finite", "mean", "median", "min", "max", "not finite / excluded"], rows, "num")
    means = camp.summary.get("metrics_mean") or {}
    note = ("<p>Uncertainty metrics (entropy, max softmax probability, calibration) show whether faults that "
            "change decisions also leave a trace a runtime monitor could catch.</p>")
    if means:
        note += _details("campaign means (as in the JSON summary)", _kv(sorted(means.items())))
    return _Section("metrics", "Uncertainty and metric distributions",
                    _plot_distributions(figs, dists, camp.clean) + table + note)


def _examples_section(camp: _Campaign) -> _Section | None:
    order = {"critical": 0, "due": 1, "crash": 2, "sdc5": 3, "sdc1": 4}
    bad = sorted((r for r in camp.rows if r["outcome"] in order),
                 key=lambda r: (order[r["outcome"]], -(r["images_changed"] or 0.0), r["id"]))[:_EXAMPLES]
    if not bad:
        return None
    rows = [(r["id"], r["outcome"], _code(r["site"]), r["idx"], r["bit"], r["fault"],
             f"{100 * (r['images_changed'] or 0.0):.1f}%", (r.get("metrics") or {}).get("task_value"))
            for r in bad]
    table = _table(["id", "outcome", "site", "element", "bit", "fault", "images changed", "task metric"], rows, "num")
    return _Section("examples", "Most damaging experiments",
                    "<p>Replay any of them with <code>onnxfi inject MODEL --from-plan PLAN.json --experiment ID</code>."
                    "</p>" + table)


def _compare_section(camp: _Campaign, other: _Campaign | None, note: str | None, figs: _Figures) -> _Section | None:
    if other is None:
        return None if note is None else _Section("hardening", "Hardening: before / after", f"<p class='warn'>{_e(note)}</p>")
    conf = _conf_pct(camp)
    b, a = camp.summary, other.summary

    def delta(key: str) -> str:
        rb, ra = b["rates"][key], a["rates"][key]
        if not (_finite(rb["rate"]) and _finite(ra["rate"])):
            return "–"
        d = 100 * (ra["rate"] - rb["rate"])
        sep = ra["hi"] < rb["lo"] or ra["lo"] > rb["hi"]
        return f"{d:+.2f} pt" + (" (intervals disjoint)" if sep else "")

    after_model = _model_path(other)
    after_sha = other.plan.model_sha256
    if after_sha == camp.plan.model_sha256:  # the shared plan holds the original's hash
        after_sha = file_sha256(after_model) if Path(after_model).is_file() else "?"
    rows: list[tuple[Any, ...]] = [
        ("model", _code(Path(_model_path(camp)).name), _code(Path(after_model).name), ""),
        ("sha256", _code(camp.plan.model_sha256[:16]), _code(after_sha[:16]),
         "same model file" if after_sha == camp.plan.model_sha256 else ""),
        ("experiments", b["experiments"], a["experiments"], ""),
    ]
    vb, va = camp.clean.get("value"), other.clean.get("value")
    rows.append((f"clean {camp.clean.get('metric') or 'metric'}", vb, va,
                 f"{va - vb:+.4g}" if _finite(vb) and _finite(va) else "–"))
    tb, ta = camp.clean.get("golden_time_s"), other.clean.get("golden_time_s")
    if _finite(tb) and _finite(ta):
        rows.append(("clean run time", f"{1000 * tb:.2f} ms", f"{1000 * ta:.2f} ms",
                     f"×{ta / tb:.2f}" if tb else "–"))
    for key in FLAGS:
        rows.append((FLAG_LABELS[key], _pct(b["rates"][key]), _pct(a["rates"][key]), delta(key)))
    table = _table(["", "before", "after (hardened)", "change"], rows)
    plan_note = ""
    if len(camp.plan.experiments) != len(other.plan.experiments):
        plan_note = "<p class='warn'>The two campaigns have different plans; compare rates, not experiments.</p>"
    intro = (f"<p>Before: {_code(camp.path)}; after: {_code(other.path)}. Same fault plan on both models; "
             f"per-fault rates over the fault space, {conf}% intervals. The clean run time is one timing of the whole eval set, a rough guide "
             "only: see the runtime comparison for measured overhead.</p>")
    charts = ""
    if b["bits"] and a["bits"]:
        charts += _plot_compare_bits(figs, camp, other, conf)
    if b["layers"] and a["layers"]:
        charts += _plot_compare_layers(figs, camp, other, conf)
    return _Section("hardening", "Hardening: before / after", intro + plan_note + table + charts)


def _ber_rows(name: str | None, summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for e in summary.get("ber") or []:
        m, rates, skipped = e["metric"], e["rates"], e["left_out"]
        metric = "–"
        if _finite(m["mean"]):
            metric = f"{m['mean']:.4f}" + (f" [{m['lo']:.4f}, {m['hi']:.4f}]" if _finite(m["lo"]) else "")
        row: tuple[Any, ...] = (
            f"{e['rate']:g}", f"{e['n']:,} of {e['planned']:,}", f"{e['expected_flips']:,.2f}",
            f"{e['flips_mean']:,.2f}" if _finite(e["flips_mean"]) else "–", metric,
            skipped["crash"] + skipped["not_finite"], _pct(rates["sdc1"]), _pct(rates["critical"]),
            _pct(rates["due"]), f"{rates['crash']['k']}",
        )
        rows.append(((_code(name),) if name is not None else ()) + row)
    return rows


def _ber_section(camp: _Campaign, other: _Campaign | None, note: str | None, figs: _Figures) -> _Section:
    s = camp.summary
    conf = _conf_pct(camp)
    metric = str(s.get("metric") or "metric")
    series: list[tuple[str, dict[str, Any]]] = [(Path(_model_path(camp)).name, s)]
    warn = f"<p class='warn'>{_e(note)}</p>" if note else ""
    if other is not None:
        if other.summary.get("fault_model") == "ber":
            name = Path(_model_path(other)).name
            if name == series[0][0]:
                name = f"{name} (compared)"
            series.append((name, other.summary))
        else:
            warn += f"<p class='warn'>The compared database {_code(other.path)} is not a bit error rate campaign.</p>"
    if not any(e["n"] for e in s.get("ber") or []):
        return _Section("ber", "Bit error rate", warn + "<p>No experiment stored yet.</p>")
    headers = ["BER", "experiments", "expected flips", "mean flips", f"{metric} mean [{conf}% CI]",
               "without metric", f"SDC-1 [{conf}% CI]", "critical", "DUE", "crashes"]
    if len(series) > 1:
        rows = [r for name, summary in series for r in _ber_rows(name, summary)]
        table = _table(["model", *headers], rows, "num")
    else:
        table = _table(headers, _ber_rows(None, s), "num")
    left_out = sum(e["left_out"]["crash"] + e["left_out"]["not_finite"] for _, x in series for e in x.get("ber") or [])
    intro = (f"<p>Each experiment flips every stored bit of the selected weights independently with the given "
             f"probability (one draw: a Binomial count of distinct bits), then runs the whole eval set. The "
             f"{_e(metric)} is averaged over the experiments at each rate, with a Student t interval across "
             f"experiments ({conf}%); outcome rates are shares of experiments with Wilson intervals. "
             f"The selected weights hold {camp.plan.population:,} bits.</p>")
    if left_out:
        intro += (f"<p>{left_out} experiment(s) without a finite {_e(metric)} (crashes, non-finite values) are left "
                  "out of the means and counted in the rates (column “without metric”).</p>")
    if len(series) > 1:
        intro += (f"<p>Compared with {_code(other.path if other is not None else '')}: the same plan (the same "
                  "flips) on the other model.</p>")
    return _Section("ber", "Bit error rate", warn + intro + _plot_ber(figs, series, conf) + table)


def _critical_bits_section(camp: _Campaign) -> _Section | None:
    """The critical-bit searches stored beside the campaign (``onnxfi critical-bits --db``), newest first:
    per weight the fraction of critical (element, bit) pairs with its interval and the experiments used,
    and the most severe flips. None when the store holds none."""
    with Store(camp.path, readonly=True) as store:
        searches = store.critical_bit_searches()
    if not searches:
        return None
    parts = []
    for sid, doc in reversed(searches):
        settings = doc.get("settings") or {}
        sampled = settings.get("elements")
        head = (f"Search {sid}: harmful = {doc.get('outcome')} or worse; weights {doc.get('sites_regex') or 'all'}; "
                f"{'every element' if sampled is None else f'{sampled} sampled elements per weight'}; "
                f"{doc.get('experiments')} of {doc.get('exhaustive_experiments')} flips run "
                f"({100 * float(doc.get('ratio') or 0.0):.1f}% of every bit of the searched elements); "
                f"critical bits overall {_pct(doc.get('rate'))}.")
        layers = [(_code(w.get("site")), w.get("dtype"), f"{w.get('searched')} of {w.get('elements')}",
                   f"{w.get('critical')} / {w.get('pairs')}", _pct(w.get("rate")),
                   f"{w.get('experiments')} / {w.get('exhaustive_experiments')}", w.get("fallbacks"))
                  for w in doc.get("layers") or [] if isinstance(w, dict)]
        top = [(_code(t.get("site")), t.get("idx"), t.get("bit"), t.get("outcome"),
                f"{_fmt(t.get('old'))} -> {_fmt(t.get('new'))}", f"{100 * float(t.get('images_changed') or 0):.1f}%")
               for t in doc.get("top") or [] if isinstance(t, dict)]
        parts.append(f"<p>{_e(head)}</p>"
                     + _table(["weight", "dtype", "elements searched", "critical bits", "fraction [CI]",
                               "flips run / every bit", "fallbacks"], layers, "num")
                     + _details(f"most severe flips ({len(top)})",
                                _table(["weight", "element", "bit", "outcome", "old -> new", "images changed"], top,
                                       "num"), open_=sid == searches[-1][0]))
    intro = ("<p>Which (element, bit) pairs of the weights cause the outcome when flipped alone, found by a checked "
             "search over each element's bits (onnxfi critical-bits; README, Critical bits).</p>")
    return _Section("critical-bits", "Critical bits", intro + "".join(parts))


def _ber_examples_section(camp: _Campaign) -> _Section | None:
    rate_of = {e.id: float(e.fault.get("rate", float("nan"))) for e in camp.plan.experiments}
    order = {"critical": 0, "due": 1, "crash": 2, "sdc5": 3, "sdc1": 4}

    def value(r: dict[str, Any]) -> float:
        v = (r.get("metrics") or {}).get("task_value")
        return float(v) if _finite(v) else math.inf

    bad = sorted((r for r in camp.rows if r["outcome"] in order),
                 key=lambda r: (order[r["outcome"]], value(r), r["id"]))[:_EXAMPLES]
    if not bad:
        return None
    rows = [(r["id"], f"{rate_of.get(int(r['id']), float('nan')):g}", (r.get("metrics") or {}).get("n_flips"),
             r["outcome"], f"{100 * (r['images_changed'] or 0.0):.1f}%", (r.get("metrics") or {}).get("task_value"))
            for r in bad]
    table = _table(["id", "BER", "flips", "outcome", "images changed", "task metric"], rows, "num")
    return _Section("examples", "Most damaging experiments",
                    "<p>Write any of them as a model with every flip of its draw: "
                    f"{_code('onnxfi inject MODEL --from-plan PLAN.json --experiment ID -o faulty.onnx')}.</p>"
                    + table)


def _num(v: Any) -> float | None:
    """A number from JSON, where ``onnxfi compare`` writes non-finite errors as strings ("inf", "nan")."""
    try:
        return float(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError):
        return None


def _runtime_status(r: dict[str, Any]) -> str:
    if not r.get("available", True):
        return f"unavailable: {r.get('reason') or '?'}"
    if r.get("error"):
        return f"error: {r['error']}"
    if r.get("reference"):
        return "reference"
    passed = r.get("passed")
    return "–" if passed is None else "within tolerance" if passed else "OUT OF TOLERANCE"


def _compare_runtimes_table(doc: dict[str, Any]) -> str:
    """The ``onnxfi.compare/1`` document of ``onnxfi compare --json``: one row per runtime."""
    rows = []
    for r in doc["runtimes"]:
        if not isinstance(r, dict):
            continue
        outs = [o for o in r.get("outputs") or [] if isinstance(o, dict)]
        errs = [x for x in (_num(o.get("max_abs")) for o in outs) if x is not None]
        rels = [x for x in (_num(o.get("max_rel")) for o in outs) if x is not None]
        top1 = [x for x in (_num(o.get("top1_agreement")) for o in outs) if x is not None]
        lat: dict[str, Any] = r["latency"] if isinstance(r.get("latency"), dict) else {}
        faults: dict[str, Any] = r["faults"] if isinstance(r.get("faults"), dict) else {}
        rates: dict[str, Any] = faults["rates"] if isinstance(faults.get("rates"), dict) else {}
        rows.append((
            r.get("name"), r.get("runtime"), _runtime_status(r), max(errs) if errs else None,
            max(rels) if rels else None, f"{100 * min(top1):.2f}%" if top1 else None,
            _num(lat.get("median_ms")), _num(lat.get("p90_ms")),
            _pct(rates.get("sdc1")) if rates else None, _pct(rates.get("due")) if rates else None,
        ))
    table = _table(["runtime", "implementation", "outputs vs reference", "max |error|", "max rel. error",
                    "top-1 agreement", "median ms", "p90 ms", "SDC-1 [95% CI]", "DUE"], rows, "num")
    top: dict[str, Any] = doc["faults"] if isinstance(doc.get("faults"), dict) else {}
    dis = top.get("disagreements") or []
    if isinstance(dis, list) and dis:
        dis_rows = [(d.get("id"), _code(d.get("site")), d.get("index"), d.get("bit"), d.get("outcomes"))
                    for d in dis[:50] if isinstance(d, dict)]
        table += _details(f"{len(dis)} faults whose outcome differs between runtimes",
                          _table(["id", "site", "element", "bit", "outcome per runtime"], dis_rows))
    return table


def _generic_rows(doc: Any) -> list[dict[str, Any]] | None:
    if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
        return doc
    if isinstance(doc, dict):
        for key in ("rows", "results", "runs"):
            rows = doc.get(key)
            if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
                return rows
    return None


def _runtime_section(doc: Any, source: str) -> _Section:
    body = f"<p>From {_code(source)}.</p>"
    if isinstance(doc, dict):
        scalars = [(str(k), v) for k, v in doc.items() if not isinstance(v, (list, dict))]
        if scalars:
            body += _kv(scalars)
    rows = _generic_rows(doc)
    if isinstance(doc, dict) and isinstance(doc.get("runtimes"), list):
        body += _compare_runtimes_table(doc)
    elif rows is not None:
        columns: list[str] = []
        for r in rows:
            columns.extend(str(k) for k in r if str(k) not in columns)
        body += _table(columns, [[r.get(c) for c in columns] for r in rows[:_TABLE_ROWS]], "num")
    else:
        body += f"<pre>{_e(json.dumps(doc, indent=2, default=str)[:20000])}</pre>"
    return _Section("runtime", "Runtime comparison", body)


# ------------------------------------------------------------------------------------------- page

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;margin:0;background:#f6f7f9}
header{background:#1d2733;color:#fff;padding:18px 32px 10px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600;word-break:break-all}
header p{margin:0 0 8px;color:#c9d1da}
nav a{color:#9fd0ff;margin-right:14px;text-decoration:none;font-size:13px}
main{max-width:1240px;margin:0 auto;padding:12px 20px 40px}
section{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:6px 20px 16px;margin:16px 0}
h2{font-size:18px;margin:12px 0 10px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #e8ebef;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
.tw{overflow-x:auto}
table.kv td{overflow-wrap:anywhere}
thead th{background:#f0f2f5}
table.kv th{font-weight:600;white-space:nowrap;color:#47535f}
table.num td{font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:break-word}
pre{background:#f0f2f5;padding:8px;overflow:auto;max-height:400px;white-space:pre-wrap}
figure{margin:8px 0}
figure svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5b6772}
details{margin:8px 0}
summary{cursor:pointer;color:#2a5d8f}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:8px 14px;min-width:140px}
.card .k{font-size:12px;color:#5b6772}
.card .v{font-size:16px;font-weight:600;font-variant-numeric:tabular-nums}
.warn{background:#fff4e0;border-left:4px solid #f0a04b;padding:6px 10px}
footer{color:#7a8590;font-size:12px;text-align:center;padding:0 0 24px}
"""


def _page(camp: _Campaign, sections: Sequence[_Section]) -> str:
    name = Path(camp.plan.model).name
    nav = "".join(f'<a href="#{_e(s.anchor)}">{_e(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{_e(s.anchor)}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections)
    if _is_ber(camp.plan):
        rates = ", ".join(f"{e['rate']:g}" for e in camp.summary.get("ber") or [])
        sub = (f"{camp.summary['experiments']:,} experiments, bit error rates {rates} over the weights, "
               f"seed {camp.plan.seed}")
    else:
        sub = (f"{camp.summary['experiments']:,} experiments, {camp.plan.target} faults "
               f"({', '.join(camp.plan.faults)}), seed {camp.plan.seed}")
    headline = _ber_headline(camp) if _is_ber(camp.plan) else _headline(camp)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>onnxfi report: {_e(name)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<header><h1>Fault-injection report: {_e(name)}</h1><p>{_e(sub)}</p><nav>{nav}</nav></header>"
        f"<main>{headline}{body}</main>"
        f"<footer>onnxfi {_e(__version__)} · {_e(camp.path.name)}</footer></body></html>\n"
    )


def render_report(db_path: str | os.PathLike[str], runtime_json: str | os.PathLike[str] | None = None) -> str:
    """The HTML page for the campaign in ``db_path``, with the hardened twin and a runtime table when given."""
    camp = _load(db_path)
    other, note = _load_compare(camp)
    runtime = _load_json(runtime_json) if runtime_json is not None else None
    figs = _Figures()
    if _is_ber(camp.plan):
        with _matplotlib_settings():
            sections = [
                _summary_section(camp),
                _ber_section(camp, other, note, figs),
                _ber_examples_section(camp),
                _runtime_section(runtime, str(runtime_json)) if runtime is not None else None,
                _repro_section(camp),
            ]
        return _page(camp, [s for s in sections if s is not None])
    with _matplotlib_settings():
        sections = [
            _summary_section(camp),
            _outcome_section(camp, figs),
            _layer_section(camp, figs),
            _bits_section(camp, figs),
            _distribution_section(camp, figs),
            _examples_section(camp),
            _critical_bits_section(camp),
            _compare_section(camp, other, note, figs),
            _runtime_section(runtime, str(runtime_json)) if runtime is not None else None,
            _repro_section(camp),
        ]
    return _page(camp, [s for s in sections if s is not None])


def write_report(
    db_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    runtime_json: str | os.PathLike[str] | None = None,
) -> Path:
    """Render the report for ``db_path`` and write it to ``out_path`` (UTF-8); returns the path written."""
    text = render_report(db_path, runtime_json)
    out = Path(out_path)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise OnnxfiError(f"cannot write {out}: {e.strerror or e}") from None
    return out
