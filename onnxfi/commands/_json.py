"""The one JSON convention of every command: ``--json FILE`` writes the command's document to FILE,
``--json -`` (or a bare ``--json``) writes it to stdout and moves everything else the command prints to stderr.

Every document is a JSON object whose ``schema`` key names it (``onnxfi.<command>/<version>``, listed in
:data:`SCHEMAS` and described key by key in docs/json.md). Non-finite numbers are written as ``null`` so that
every document is standard JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

from onnxfi.errors import InternalError, OnnxfiError

__all__ = ["SCHEMAS", "STDOUT", "add_json_arg", "write_json", "json_command", "jsonable", "check_model_output"]

STDOUT = "-"

# The names are spelled out (the library modules that own some of them load ONNX and numpy, and every
# command's parser imports this module); tests/test_startup.py checks them against the owners' constants.
SCHEMAS: dict[str, str] = {
    "inspect": "onnxfi.inspect/1",
    "run": "onnxfi.run/1",
    "inject": "onnxfi.inject/1",
    "harden": "onnxfi.harden/1",
    "analyze": "onnxfi.analyze/1",
    "results": "onnxfi.results/1",
    "gate": "onnxfi.gate/1",  # onnxfi.gate.GATE_SCHEMA
    "compare": "onnxfi.compare/1",  # onnxfi.compare.COMPARE_SCHEMA
    "zoo list": "onnxfi.zoo.list/1",
    "zoo eval": "onnxfi.zoo.eval/1",
    "critical-bits": "onnxfi.critical-bits/1",  # onnxfi.critical.CRITICAL_BITS_SCHEMA
    "worst-case": "onnxfi.worst-case/1",  # onnxfi.worstcase.WORST_CASE_SCHEMA
    "advise": "onnxfi.advise/1",  # onnxfi.advise.ADVISE_SCHEMA
}

# files that a JSON document must never replace (a typo such as `--json model.onnx` would otherwise eat a model)
_NOT_JSON = frozenset({".onnx", ".pb", ".db", ".npz", ".npy", ".data", ".html"})
# suffixes from which onnx infers a text serialization: a model written there is not a binary .onnx file
_TEXT_MODEL = frozenset({".json", ".onnxjson", ".txtpb", ".textproto", ".prototxt", ".pbtxt", ".onnxtxt", ".onnxtext"})

# where `--json -` writes: the stdout of the caller, saved before the command's own output moves to stderr
_JSON_STREAM: ContextVar[TextIO | None] = ContextVar("onnxfi_json_stream", default=None)


def jsonable(obj: Any) -> Any:
    """:func:`onnxfi.jsonvalues.jsonable` (numpy loads when a document is written, not with the parser)."""
    from onnxfi.jsonvalues import jsonable as plain

    return plain(obj)


def _json_target(value: str) -> str:
    if value == STDOUT:
        return value
    if not value:
        raise argparse.ArgumentTypeError("give a file name, or - for stdout")
    path = Path(value)
    if path.suffix.lower() in _NOT_JSON:
        raise argparse.ArgumentTypeError(f"{value}: refusing to write a JSON document over a {path.suffix} file "
                                         "(give a .json name, or - for stdout)")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory")
    return value


def add_json_arg(parser: argparse._ActionsContainer, what: str) -> None:
    """Add ``--json [FILE]``: FILE, or ``-`` / no value for stdout (a bare ``--json`` keeps older scripts working)."""
    parser.add_argument(
        "--json", nargs="?", const=STDOUT, type=_json_target, metavar="FILE",
        help=f"write {what} as JSON to FILE; '-' or no FILE: to stdout, with everything else on stderr "
        "(keys: docs/json.md)",
    )


def write_json(target: str | None, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``target`` (a file, or ``-`` for stdout); nothing when ``target`` is None.

    A file written is announced as ``wrote FILE`` with the command's other output.
    """
    if target is None:
        return
    schema = doc.get("schema")
    if not isinstance(schema, str) or schema not in SCHEMAS.values():
        raise InternalError(f"JSON document without a known schema key: {schema!r}")
    text = json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
    if target == STDOUT:
        stream = _JSON_STREAM.get() or sys.stdout
        stream.write(text)
        stream.flush()
        return
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise OnnxfiError(f"--json {target}: {e.strerror or e}") from None
    from onnxfi.commands._common import stdout

    stdout.print(f"wrote {target}", markup=False, highlight=False)


def json_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's ``run``: with ``--json -`` stdout carries only the document, the rest goes to stderr."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        if getattr(args, "json", None) != STDOUT:
            return run(args)
        token = _JSON_STREAM.set(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return run(args)
        finally:
            _JSON_STREAM.reset(token)

    return wrapper


def check_model_output(path: str, option: str = "-o") -> None:
    """Refuse a model file name from which onnx would write a text serialization (``-o f.json`` is JSON text)."""
    suffix = Path(path).suffix.lower()
    if suffix in _TEXT_MODEL:
        raise OnnxfiError(f"{option} {path}: the model is written as a binary .onnx file, not {suffix} text; "
                          "name it .onnx (the command's JSON document is --json FILE)")
