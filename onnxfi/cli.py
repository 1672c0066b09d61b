"""Command-line entry point: one sub-command per module in :mod:`onnxfi.commands`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import pkgutil
import sys
import traceback
from collections.abc import Sequence

from onnxfi import __version__
from onnxfi.errors import InternalError, OnnxfiError

__all__ = ["main", "build_parser"]

_ORDER = ["inspect", "inject", "run", "analyze", "harden", "gate", "compare", "report", "zoo"]

_EPILOG = """examples:
  onnxfi inspect model.onnx                       sites, parameters, fault space
  onnxfi inject model.onnx --site conv1.weight --index 3,0,1,1 --bit 30 -o faulty.onnx
  onnxfi run model.onnx --data eval.npz           outputs, timing, accuracy with labels
  onnxfi zoo list                                 bundled models (a zoo name works as MODEL)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxfi",
        description="Fault injection and hardening for any ONNX model.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxfi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import onnxfi.commands as commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"onnxfi.commands.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


# onnxruntime is an extra (two distributions of one module that must not be installed together): say which
_NO_RUNTIME = ("ONNX Runtime is not installed: pip install 'onnxfi[cpu]' (or 'onnxfi[gpu]' for NVIDIA GPUs; "
               "one of the two, not both)")


def _quiet_libraries() -> None:
    """Only onnxfi's own lines on stderr: onnx_ir's warnings about a damaged model (onnxfi reports the
    damage itself) and ONNX Runtime's error log (its errors come back as exceptions) stay silent."""
    logging.getLogger("onnx_ir").addHandler(logging.NullHandler())
    logging.getLogger("onnx_ir").propagate = False
    import onnxruntime as ort

    ort.set_default_logger_severity(4)


def main(argv: Sequence[str] | None = None) -> int:
    if importlib.util.find_spec("onnxruntime") is None:
        print(f"onnxfi: error: {_NO_RUNTIME}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(func(args) or 0)
    except OnnxfiError as e:  # the user's input: one line, no traceback
        print(f"onnxfi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxfi: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in onnxfi (InternalError, or any other exception): the whole traceback
        traceback.print_exc()
        print(f"onnxfi: internal error ({type(e).__name__}): this is a bug in onnxfi, not a fault outcome; "
              "please report it with the traceback above (a campaign's stored rows are kept: --resume "
              "continues it)", file=sys.stderr)
        return InternalError.exit_code
