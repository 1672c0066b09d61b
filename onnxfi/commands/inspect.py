"""``onnxfi inspect``: inputs, outputs, opsets, parameters and every fault site of a model."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from onnxfi.commands._common import add_model_args, dtype_name, fmt_int, load_from_args, stdout
from onnxfi.commands._json import SCHEMAS, add_json_arg, json_command, write_json
from onnxfi.commands._text import KEEP, NUMBER, fit_names, table_width

if TYPE_CHECKING:  # ONNX loads when the command runs, not with the parser (--help)
    from onnxfi.model import LoadedModel
    from onnxfi.sites import Site, SiteIndex

__all__ = ["register", "run", "summary"]

_EXAMPLES = """examples:
  onnxfi inspect model.onnx
  onnxfi inspect model.onnx --weights --all
  onnxfi inspect model.onnx --input-shape input:1x3x224x224 --json sites.json
  onnxfi inspect digits_cnn                 (a model_zoo name)
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="list inputs, outputs and fault sites", epilog=_EXAMPLES,
        description="Show a model's inputs, outputs, opsets, parameter count and its fault sites "
        "(weights: every stored numeric tensor; activations: every numeric node output).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--weights", action="store_true", help="weight sites only")
    kind.add_argument("--activations", action="store_true", help="activation sites only")
    p.add_argument("--sites", metavar="REGEX", help="only sites whose name matches")
    p.add_argument("--include-structure", action="store_true",
                   help="also list tensors that only hold shapes, axes or indices")
    p.add_argument("--all", action="store_true", help="list every site (default: first 50 of each kind)")
    add_json_arg(p, "the model summary and its sites")
    p.set_defaults(func=run)


def summary(loaded: LoadedModel, sites: SiteIndex, chosen: list[Site]) -> dict[str, Any]:
    weights = [s for s in sites.select("weights")]
    structure = [s for s in sites.sites if s.structural]
    spaces: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for s in chosen:
        if s.fault_space is None:
            unknown[s.kind] += 1
        else:
            spaces[s.kind] += s.fault_space
    return {
        "model": str(loaded.path),
        "producer": loaded.producer,
        "ir_version": loaded.model.ir_version,
        "opsets": {k or "ai.onnx": v for k, v in loaded.model.opset_imports.items()},
        "external_data": loaded.has_external_data,
        "nodes": sum(1 for _ in loaded.graph.all_nodes()),
        "inputs": [{"name": i.name, "dtype": dtype_name(i.dtype), "shape": list(i.shape or [])}
                   for i in loaded.inputs()],
        "outputs": [{"name": o.name, "dtype": dtype_name(o.dtype), "shape": list(o.shape or [])}
                    for o in loaded.outputs()],
        "parameters": sum(s.elements or 0 for s in weights),
        "structure_tensors": len(structure),
        "fault_space": dict(spaces),
        "fault_space_total": sum(spaces.values()),
        "sites_with_unknown_shape": dict(unknown),
        "skipped_tensors": sites.skipped,
        "warnings": loaded.warnings,
        "sites": [s.to_dict() for s in chosen],
    }


def _site_table(title: str, rows: list[Site], limit: int | None) -> Table:
    shown = rows if limit is None else rows[:limit]
    more = f"... {len(rows) - limit} more (use --all)" if limit is not None and len(rows) > limit else None

    def make(names: list[str], narrow: bool = False) -> Table:
        t = Table(title=title, title_justify="left", show_edge=False, header_style="bold",
                  collapse_padding=narrow, pad_edge=not narrow)
        cols = [("site", "left", KEEP), ("op(s)", "left", KEEP), ("dtype", "left", NUMBER), ("shape", "left", KEEP),
                ("elements", "right", NUMBER), ("bits", "right", NUMBER), ("fault space", "right", NUMBER),
                ("where", "left", KEEP)]
        if narrow:  # both follow from the others: elements x the dtype's bits
            cols = [c for c in cols if c[0] not in ("bits", "fault space")]
        for col, just, opts in cols:
            t.add_column(col, justify=just, **opts)  # type: ignore[arg-type]
        for name, s in zip(names, shown):
            where = s.storage if s.kind == "weight" else "per image" if s.batched else "whole tensor"
            if s.graph:
                where += f" in {s.graph}"
            if s.external:
                where += " (external)"
            if s.structural:
                where += " [structure]"
            if s.packing is not None:
                where += f" [packed {s.packing.bits}-bit]"
            cells = [escape(name), ",".join(s.ops) or "(unused)", s.dtype_name, s.shape_text(), fmt_int(s.elements)]
            if not narrow:
                cells += [str(s.bits), fmt_int(s.fault_space)]
            t.add_row(*cells, escape(where))
        notes = ([more] if more else []) + (["narrow terminal: bits and fault space left out (--json has them)"]
                                            if narrow else [])
        t.caption = "; ".join(notes) or None
        return t

    # long names are shortened from the middle to the width the other columns leave (distinct stay distinct);
    # a terminal too narrow even then loses the two columns that follow from the others
    names = [s.name for s in shown]
    t = fit_names(make, names, stdout)
    if table_width(t, stdout) > stdout.width:
        t = fit_names(lambda n: make(n, narrow=True), names, stdout)
    return t


def _packing_notes(weights: list[Site]) -> list[str]:
    """What one fault index and bit address in packed sites: a byte and the logical value behind each bit."""
    from onnxfi.bits import dtype_info

    notes = []
    for s in weights:
        if s.packing is not None:
            notes.append(f"{s.name}: {s.packing.note()}; `onnxfi inject` names the value behind a bit")
    sub_byte = sorted({s.dtype_name for s in weights if dtype_info(s.dtype).per_byte > 1})
    if sub_byte:
        notes.append(f"{'/'.join(sub_byte)} sites count 4-bit elements, stored two per byte with the even element in "
                     "the low nibble: element i bit b is bit (i % 2) * 4 + b of byte i // 2")
    return notes


@json_command
def run(args: argparse.Namespace) -> int:
    loaded, sites = load_from_args(args)
    kind = "weights" if args.weights else "activations" if args.activations else "all"
    chosen = sites.select(kind, args.sites, include_structure=args.include_structure)
    info = summary(loaded, sites, chosen)
    out = stdout
    out.print(f"[bold]{info['model']}[/bold]  producer: {info['producer']}  ir_version: {info['ir_version']}  "
              f"opsets: {', '.join(f'{k} {v}' for k, v in info['opsets'].items())}  nodes: {info['nodes']}"
              + ("  (external data)" if info["external_data"] else ""), markup=True, soft_wrap=True)
    io = Table(show_edge=False, header_style="bold")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for role, specs in (("input", loaded.inputs()), ("output", loaded.outputs())):
        for spec in specs:
            io.add_row(role, spec.name, dtype_name(spec.dtype), spec.shape_text())
    out.print(io)
    limit = None if args.all else 50
    for k, title in (("weight", "Weight sites"), ("activation", "Activation sites")):
        rows = [s for s in chosen if s.kind == k]
        if rows:
            out.print(_site_table(f"{title} ({len(rows)})", rows, limit))
    out.print(f"parameters: {info['parameters']:,}   fault space (elements x bits): "
              + ", ".join(f"{k} {v:,}" for k, v in info["fault_space"].items())
              + f"   total {info['fault_space_total']:,}")
    for note in _packing_notes([s for s in chosen if s.kind == "weight"]):
        out.print(f"[dim]{escape(note)}[/dim]")
    if info["sites_with_unknown_shape"]:
        out.print("[yellow]sites with unknown shape (give --input-shape): "
                  + ", ".join(f"{k} {v}" for k, v in info["sites_with_unknown_shape"].items()) + "[/yellow]")
    if info["structure_tensors"] and not args.include_structure:
        out.print(f"[dim]{info['structure_tensors']} structure tensors (shapes, axes, indices) not listed; "
                  "--include-structure lists them[/dim]")
    if args.sites and sites.pattern_hint(args.sites):
        out.print(f"[yellow]{sites.pattern_hint(args.sites).removeprefix('; ')}[/yellow]", markup=True)
    if sites.skipped:
        out.print(f"[dim]not fault sites (non-numeric): {', '.join(sites.skipped[:10])}[/dim]")
    for w in loaded.warnings:
        out.print(f"[yellow]warning: {w}[/yellow]")
    write_json(args.json, {"schema": SCHEMAS["inspect"], **info})
    return 0
