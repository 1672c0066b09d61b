"""Reports built from a campaign database: a self-contained HTML page with plots (:mod:`onnxfi.report.html`)."""

from __future__ import annotations

from onnxfi.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
