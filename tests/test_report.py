"""HTML report: rendering from a campaign database, escaping of hostile names, the hardening and runtime
sections, and the page as headless Chromium loads it (console errors, CSP violations, a screenshot).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so errors come back as structured events rather
than scraped log lines. A missing Chromium fails the test: CI installs it (``.ci/run``).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from onnx import TensorProto

from onnxfi.campaign import run_campaign
from onnxfi.cli import main
from onnxfi.engine import EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.model import load_model
from onnxfi.outcomes import FLAGS
from onnxfi.plan import Plan, make_plan
from onnxfi.report.html import CSP, inline_svg, render_report
from onnxfi.sites import enumerate_sites
from onnxfi.stats import rate_with_ci
from onnxfi.store import Store, load_campaign
from onnxfi.summary import aggregate

ROOT = Path(__file__).resolve().parents[1]

# Names an attacker could put in a model: they must reach the page as text, never as markup.
HOSTILE_WEIGHT = "<script>alert(1)</script>"
HOSTILE_BIAS = 'b"><img src=x onerror=alert(2)>$x^$'
HOSTILE_VALUE = "</svg><script>alert(3)</script>-->"
HOSTILE_NODE = "<script>alert('node')</script>"


# ------------------------------------------------------------------------------------ chromium (CDP)


@dataclass
class PageLoad:
    errors: list[str]
    screenshot: bytes
    probe: Any


class Chromium:
    """One headless Chromium driven over ``--remote-debugging-pipe``; each ``load`` opens a fresh tab."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.fail("chromium not found: install it (Debian: apt-get install -y chromium); CI does in .ci/run")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire_fds() -> None:  # in the child: Chromium reads commands on fd 3, writes replies on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self._log = open(workdir / "chromium.log", "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--mute-audio", "--disable-dev-shm-usage",
             f"--user-data-dir={workdir / 'profile'}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=wire_fds, pass_fds=(3, 4),
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._recv(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> None:
        if any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            return
        while True:
            msg = self._recv(timeout)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method and msg.get("sessionId") == session:
                    return

    def load(self, url: str, probe: str = "null", width: int = 1280, max_height: int = 12000) -> PageLoad:
        """Open ``url``; return every error Chromium reported, a full-page PNG, and ``probe`` evaluated."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        value = self.send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        height = int(min(max_height, size["height"]))
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        }, session)
        self.send("Target.closeTarget", {"targetId": target})
        errors = []
        for e in self.events:
            if e.get("sessionId") != session:
                continue
            p = e["params"]
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                errors.append(f"console.{p['type']}: {[a.get('value') for a in p['args']]}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"{p['entry']['source']}: {p['entry']['text']}")
        self.events = [e for e in self.events if e.get("sessionId") != session]
        return PageLoad(errors, base64.b64decode(shot["data"]), value.get("result", {}).get("value"))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            os.close(fd)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chrome = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield chrome
    finally:
        chrome.close()


# -------------------------------------------------------------------------------------- campaigns


@pytest.fixture(scope="module")
def zoo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small campaign on the digits_cnn zoo model, through the CLI."""
    db = tmp_path_factory.mktemp("zoo") / "digits.db"
    assert main(["analyze", "digits_cnn", "--faults", "96", "--seed", "1", "--db", str(db)]) == 0
    return db


def hostile_model(scale: float = 1.0) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w = (scale * rng.standard_normal((4, 3))).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", HOSTILE_WEIGHT], [HOSTILE_VALUE], name=HOSTILE_NODE),
         oh.make_node("Add", [HOSTILE_VALUE, HOSTILE_BIAS], ["y"], name="add")],
        "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[onh.from_array(w, HOSTILE_WEIGHT), onh.from_array(b, HOSTILE_BIAS)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def hostile_plan(model_path: Path) -> Plan:
    loaded = load_model(str(model_path))
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("all")
    return make_plan(model_path, sites, n_faults=48, seed=3, target="all")


def campaign(model_path: Path, db: Path, plan: Plan | None = None) -> Path:
    with Store(db) as store:
        run_campaign(plan or hostile_plan(model_path), EngineConfig(model_path=str(model_path), samples=8), store)
    return db


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    model = d / "hostile.onnx"
    onnx.save(hostile_model(), str(model))
    return campaign(model, d / "hostile.db")


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def zoo_report(zoo_db: Path) -> Path:
    out = zoo_db.with_name("report.html")
    assert main(["report", str(zoo_db), "-o", str(out)]) == 0
    return out


def test_cli_writes_a_self_contained_page(zoo_report: Path) -> None:
    page = zoo_report.read_text(encoding="utf-8")
    assert f'content="{CSP.replace(chr(39), "&#x27;")}"' in page
    low = page.lower()
    for active in ("<script", "<link", "<iframe", "@import", "src=\"http", "href=\"http", "url(http"):
        assert active not in low, active
    for section in ("summary", "outcomes", "layers", "bits", "metrics", "examples", "repro"):
        assert f'<section id="{section}">' in page
    assert page.count("<svg ") == 5  # outcomes, layers, heatmap, per-bit, distributions
    assert "digits_cnn.onnx" in page and "<th>seed</th><td>1</td>" in page


def test_page_loads_in_chromium_without_errors(zoo_report: Path, browser: Chromium) -> None:
    probe = "[document.querySelectorAll('svg').length, document.scripts.length, document.title]"
    page = browser.load(zoo_report.as_uri(), probe)
    assert page.errors == []
    assert page.probe == [5, 0, "onnxfi report: digits_cnn.onnx"]
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 50_000
    zoo_report.with_suffix(".png").write_bytes(page.screenshot)


def test_chromium_check_catches_errors(tmp_path: Path, browser: Chromium) -> None:
    """The check above can fail: a script error, and content the report's CSP blocks, are both reported."""
    js = tmp_path / "js.html"
    js.write_text("<!DOCTYPE html><title>t</title><script>console.error('oops'); missing();</script>")
    errors = browser.load(js.as_uri()).errors
    assert any("oops" in e for e in errors) and any("exception" in e for e in errors)
    csp = tmp_path / "csp.html"
    csp.write_text(f'<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="{CSP}"><title>t</title>'
                   '<img src="http://example.invalid/x.png"><script>1</script>')
    errors = browser.load(csp.as_uri()).errors
    assert any("example.invalid" in e for e in errors) and any("inline script" in e for e in errors)


def test_hostile_names_are_text(hostile_db: Path, tmp_path: Path, browser: Chromium) -> None:
    page = render_report(hostile_db)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    out = tmp_path / "hostile.html"
    out.write_text(page, encoding="utf-8")
    probe = "[document.scripts.length, document.images.length, document.body.innerText]"
    loaded = browser.load(out.as_uri(), probe)
    assert loaded.errors == []
    scripts, images, text = loaded.probe
    assert (scripts, images) == (0, 0)
    for name in (HOSTILE_WEIGHT, HOSTILE_BIAS, HOSTILE_VALUE):
        assert name in text  # shown as the text it is


def test_svg_with_active_content_is_refused() -> None:
    with pytest.raises(RuntimeError, match="active content"):
        inline_svg('<?xml?><svg width="1"><script>alert(1)</script></svg>', "f1-", "x")
    svg = inline_svg('<?xml version="1.0"?>\n<svg x="1"><!-- a --><metadata>m</metadata>'
                     '<path id="p1"/><use xlink:href="#p1"/><g clip-path="url(#p1)"/></svg>', "f7-", "alt")
    assert svg == ('<svg role="img" aria-label="alt" x="1"><path id="f7-p1"/><use xlink:href="#f7-p1"/>'
                   '<g clip-path="url(#f7-p1)"/></svg>')


def test_hardening_before_after(hostile_db: Path, tmp_path: Path) -> None:
    """`analyze --compare` contract: {"db", "model"} under the `compare` key; the other DB has the same plan."""
    hardened = tmp_path / "hardened.onnx"
    onnx.save(hostile_model(scale=0.5), str(hardened))
    with Store(hostile_db) as store:
        plan = Plan.from_dict(store.meta("plan"))
    other = campaign(hardened, tmp_path / "before.db.compare.db", plan)
    before = tmp_path / "before.db"
    shutil.copy(hostile_db, before)
    with Store(before) as store:
        store.set_meta("compare", {"db": str(other), "model": str(hardened)})
    page = render_report(before)
    assert '<section id="hardening">' in page and "hardened.onnx" in page and "hostile.onnx" in page
    assert page.count("<svg ") == 7  # + per-bit and per-layer before/after
    with Store(before) as store:  # moved away from where analyze wrote it: found next to the database
        store.set_meta("compare", {"db": "elsewhere/before.db.compare.db", "model": str(hardened)})
    assert render_report(before) == page  # and the same database gives the same page (no timestamp)
    with Store(before) as store:
        store.set_meta("compare", {"db": str(tmp_path / "gone.db"), "model": "x"})
    gone = render_report(before)
    assert f"<p class='warn'>comparison database not found: {html.escape(str(tmp_path / 'gone.db'))}</p>" in gone


def test_runtime_comparison_table(hostile_db: Path, tmp_path: Path) -> None:
    """`--compare-json` with the `onnxfi compare --json` document (schema onnxfi.compare/1), and any other JSON."""
    rate = {"k": 1, "n": 4, "rate": 0.25, "lo": 0.05, "hi": 0.7}
    doc = {
        "schema": "onnxfi.compare/1", "model": HOSTILE_WEIGHT, "reference": "cpu", "passed": False,
        "runtimes": [
            {"name": "cpu", "available": True, "runtime": "onnxruntime CPU", "reference": True, "passed": None,
             "error": "", "outputs": [], "latency": {"median_ms": 1.25, "p90_ms": 2.0},
             "faults": {"outcomes": {}, "rates": {"sdc1": rate, "due": rate}}},
            {"name": "reference", "available": True, "runtime": HOSTILE_BIAS, "reference": False, "passed": False,
             "error": "", "outputs": [{"max_abs": "inf", "max_rel": 0.5, "top1_agreement": 0.75}],
             "latency": None, "faults": None},
            {"name": "openvino", "available": False, "reason": "not installed", "outputs": []},
        ],
        "faults": {"disagreements": [{"id": 3, "site": HOSTILE_VALUE, "index": 0, "bit": 30,
                                      "outcomes": {"cpu": "sdc1", "reference": "masked"}}]},
    }
    cmp_json = tmp_path / "runtime.json"
    cmp_json.write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    assert main(["report", str(hostile_db), "-o", str(out), "--compare-json", str(cmp_json)]) == 0
    page = out.read_text(encoding="utf-8")
    assert '<section id="runtime">' in page
    for cell in ("<td>reference</td>", "<td>1.25</td>", "<td>25.00% [5.00, 70.00]</td>", "<td>inf</td>",
                 "<td>OUT OF TOLERANCE</td>", "<td>75.00%</td>", "<td>unavailable: not installed</td>"):
        assert cell in page, cell
    assert "1 faults whose outcome differs" in page
    assert "<script" not in page.lower() and "<img" not in page.lower()
    other_json = tmp_path / "other.json"
    other_json.write_text(json.dumps({"note": "x", "rows": [{"provider": "cuda", "ms": 0.5}]}))
    generic = render_report(hostile_db, other_json)
    assert "<th>provider</th><th>ms</th>" in generic and "<td>cuda</td><td>0.5</td>" in generic


def test_user_errors(hostile_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.db"), "-o", str(tmp_path / "x.html")]) == 2
    assert "not found" in capsys.readouterr().err
    Store(tmp_path / "empty.db").close()
    assert main(["report", str(tmp_path / "empty.db")]) == 2
    assert "no campaign" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["report", str(hostile_db), "-o", str(tmp_path / "x.html"), "--compare-json", str(bad)]) == 2
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(OnnxfiError, match=r"pip install .matplotlib"):
        render_report(hostile_db)


def test_campaign_with_no_result_yet(hostile_db: Path, tmp_path: Path) -> None:
    with Store(hostile_db) as store:
        plan = store.meta("plan")
    with Store(tmp_path / "fresh.db") as store:
        store.set_meta("plan", plan)
    page = render_report(tmp_path / "fresh.db")
    assert "Partial campaign (interrupted or stopped early): 0 of" in page and "No experiment stored yet" in page
    assert "the rates use 0 of 48 planned experiments" in page


def test_report_subprocess(tmp_path: Path) -> None:
    """End to end: a user error is one line on stderr and exit status 2 (no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "report", str(tmp_path / "none.db")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"onnxfi: error: results database not found: {tmp_path / 'none.db'}"


# ------------------------------------------------------------------------------- numbers in tables


class _Tables(HTMLParser):
    """The text of every table cell, per section: {section id: [[header cells], [row cells], ...] per table}."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self._section = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
        elif tag == "table":
            self.sections.setdefault(self._section, []).append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.sections[self._section][-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> dict[str, list[list[list[str]]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.sections


def _shown(cell: str) -> tuple[float, float, float]:
    """'12.50% [3.00, 40.10]' -> (12.5, 3.0, 40.1)"""
    m = re.fullmatch(r"(\d+\.\d\d)% \[(\d+\.\d\d), (\d+\.\d\d)\]", cell)
    assert m, cell
    return float(m[1]), float(m[2]), float(m[3])


def _check_rate(cell: str, k: int, n: int, confidence: float) -> None:
    """The cell shows k/n and its Wilson interval (onnxfi.stats.rate_with_ci), in percent to two decimals."""
    r = rate_with_ci(k, n, confidence)
    lo, hi = r.lo, r.hi
    assert _shown(cell) == pytest.approx((100 * k / n, 100 * lo, 100 * hi), abs=0.0051), (cell, k, n)


def test_tables_show_the_counts_and_rates_of_the_database(zoo_db: Path, zoo_report: Path) -> None:
    """Every count and rate in the outcome, per-layer and per-bit tables, against SQL counts of the stored rows."""
    tables = _tables(zoo_report.read_text(encoding="utf-8"))
    camp = load_campaign(zoo_db)
    summary = aggregate(camp.plan, camp.rows)
    conf = summary["confidence"]
    db = sqlite3.connect(zoo_db)
    flags = ", ".join(f"SUM({f})" for f in FLAGS)
    n, *totals = db.execute(f"SELECT COUNT(*), {flags} FROM results").fetchone()
    assert n == 96
    (outcomes,) = tables["outcomes"][:1]
    assert outcomes[0][:2] == ["outcome", "sampled k/n"]
    assert summary["progress"]["complete"] and summary["progress"]["used"] == n
    assert len(outcomes) == 1 + len(FLAGS)
    for row, flag, k in zip(outcomes[1:], FLAGS, totals):
        assert row[1] == f"{k}/{n}", flag
        shown = summary["rates"][flag]  # the design's estimate (proportional: k/n with its interval)
        assert _shown(row[2]) == pytest.approx((100 * shown["rate"], 100 * shown["lo"], 100 * shown["hi"]), abs=0.0051)
        assert shown["rate"] == pytest.approx(k / n)
        _check_rate(row[3], k, n, conf)  # the raw sample rate: k/n with its Wilson interval
    by_site = {site: (count, rest) for site, count, *rest in
               db.execute(f"SELECT site, COUNT(*), {flags} FROM results GROUP BY site")}
    layer_est = {e["key"]: e for e in summary["layers"]}
    (layers,) = tables["layers"]
    assert layers[0][:4] == ["#", "site", "kind", "n"]
    assert sorted(r[1] for r in layers[1:]) == sorted(by_site)
    for row in layers[1:]:
        count, k = by_site[row[1]]
        k_of = dict(zip(FLAGS, k))
        assert int(row[3]) == count
        for cell, flag in zip(row[4:8], ("sdc1", "sdc5", "critical", "due")):
            e = layer_est[row[1]][flag]
            assert e["k"] == k_of[flag] and e["rate"] == pytest.approx(k_of[flag] / count)
            assert _shown(cell) == pytest.approx((100 * e["rate"], 100 * e["lo"], 100 * e["hi"]), abs=0.0051)
        assert int(row[8]) == k_of["crash"]
    shown_sdc1 = [_shown(r[4])[0] for r in layers[1:]]
    assert shown_sdc1 == sorted(shown_sdc1, reverse=True)  # most vulnerable first
    by_bit = {bit: (count, rest) for bit, count, *rest in
              db.execute(f"SELECT bit, COUNT(*), {flags} FROM results WHERE bit IS NOT NULL GROUP BY bit")}
    bit_est = {int(e["key"]): e for e in summary["bits"]}
    (bits,) = tables["bits"]
    assert [int(r[0]) for r in bits[1:]] == sorted(by_bit, reverse=True)
    for row in bits[1:]:
        count, k = by_bit[int(row[0])]
        k_of = dict(zip(FLAGS, k))
        assert int(row[1]) == count
        for cell, flag in zip(row[2:5], ("sdc1", "critical", "due")):
            e = bit_est[int(row[0])][flag]
            assert e["k"] == k_of[flag]
            assert _shown(cell) == pytest.approx((100 * e["rate"], 100 * e["lo"], 100 * e["hi"]), abs=0.0051)
        assert int(row[5]) == k_of["crash"]
    repro = {r[0]: r[1] for r in tables["repro"][0]}
    paths = db.execute("SELECT COALESCE(path, 'unrecorded'), COUNT(*) FROM results GROUP BY 1 ORDER BY 2 DESC")
    assert repro["execution paths"] == ", ".join(f"{p} {c:,}" for p, c in paths)
    db.close()


def test_table_check_can_fail(zoo_db: Path, zoo_report: Path) -> None:
    """The parser reads what the page shows: a page with one changed count no longer matches."""
    page = zoo_report.read_text(encoding="utf-8")
    (outcomes,) = _tables(page)["outcomes"][:1]
    label, count = outcomes[1][0], outcomes[1][1]
    k, n = (int(x) for x in count.split("/"))
    tampered = page.replace(f"<td>{label}</td><td>{count}</td>", f"<td>{label}</td><td>{k + 1}/{n}</td>", 1)
    assert tampered != page
    assert _tables(tampered)["outcomes"][0][1][1] == f"{k + 1}/{n}"
    with pytest.raises(AssertionError):
        _check_rate("12.50% [3.00, 40.10]", 1, 4, 0.99)


def test_report_from_a_database_loads_neither_the_engine_nor_onnxruntime(zoo_db: Path, tmp_path: Path) -> None:
    script = f"""
import json, sys
from onnxfi.report.html import write_report
write_report({str(zoo_db)!r}, {str(tmp_path / 'r.html')!r})
print(json.dumps(sorted(m for m in ("onnxruntime", "onnxfi.engine", "onnxfi.campaign") if m in sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert (tmp_path / "r.html").read_text(encoding="utf-8").count("<svg ") == 5


def test_critical_bit_searches_stored_beside_the_campaign_are_shown(zoo_db: Path, tmp_path: Path) -> None:
    """``critical-bits --db`` on a campaign's store: the report's "Critical bits" table holds, per weight, the
    critical pairs the store's records count; a store without searches has no such section."""
    db = tmp_path / "with-critical.db"
    shutil.copy(zoo_db, db)
    assert main(["critical-bits", "digits_cnn", "--sites", "classifier.2.bias", "--elements", "3", "--db",
                 str(db)]) == 0
    out = tmp_path / "r.html"
    assert main(["report", str(db), "-o", str(out)]) == 0
    tables = _tables(out.read_text(encoding="utf-8"))
    assert "critical-bits" in tables
    weights = tables["critical-bits"][0]
    assert weights[0][:4] == ["weight", "dtype", "elements searched", "critical bits"]
    records = sqlite3.connect(db).execute(
        "SELECT COUNT(*), SUM(harmful) FROM critical_bits WHERE site = 'classifier.2.bias'").fetchone()
    assert weights[1][0] == "classifier.2.bias" and weights[1][3] == f"{records[1]} / {records[0]}"
    plain = tmp_path / "plain.html"
    assert main(["report", str(zoo_db), "-o", str(plain)]) == 0
    assert "critical-bits" not in _tables(plain.read_text(encoding="utf-8"))
