"""report.html in a real browser: headless Chromium opens it from disk (no server) and checks what a
reader uses: every figure decodes, a table-of-contents link lands on its section, a click on a column
heading sorts the table (numbers as numbers), a second click reverses it.

Run on a fabricated folder and on the committed long reference report (results/reference/long-cpu: a
complete grid, so Table 1 has a number in every row to sort).
Needs Chromium (Debian/Ubuntu: ``apt-get install -y chromium``); skipped with a reason without it.
Set ``SSVAE_REPORT_SCREENSHOT=/path.png`` to keep a screenshot of the reference report to look at.
"""
import html as htmllib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench import report
from tests.report_fixtures import fabricate_results

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "long-cpu"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

# Appended to a copy of report.html: once the page (and its inline images) has loaded, act as a reader
# would and write what happened into the DOM, where --dump-dom prints it.
CHECK = """<script>
window.addEventListener("load", function () {
  var out = {};
  var imgs = Array.prototype.slice.call(document.images);
  out.n_images = imgs.length;
  out.n_figures = document.querySelectorAll("figure figcaption").length;
  out.broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  out.widths = imgs.map(function (i) { return i.naturalWidth; });
  var table = document.getElementById("table-table1");
  var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) { return th.textContent; });
  out.table1_head = heads;
  var col = heads.length - 3;  /* the largest label count's column: ours, then Pyro's and the difference */
  function column(i) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[i].textContent; });
  }
  out.before = column(0);
  table.querySelectorAll("thead th")[col].click();
  out.asc = column(col); out.asc_sort = table.querySelectorAll("thead th")[col].getAttribute("aria-sort");
  table.querySelectorAll("thead th")[col].click();
  out.desc = column(col); out.desc_sort = table.querySelectorAll("thead th")[col].getAttribute("aria-sort");
  var link = document.querySelector('nav#toc a[href="#timing"]');
  out.toc_text = link.textContent;
  link.click();
  setTimeout(function () {
    var target = document.getElementById("timing");
    out.hash = location.hash;
    out.scroll_y = window.scrollY;
    out.target_top = target.getBoundingClientRect().top;
    out.target_heading = target.querySelector("h2").textContent;
    var pre = document.createElement("pre");
    pre.id = "report-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 300);
});
</script>"""


def _flags(profile):
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


@pytest.fixture(scope="module", params=["fabricated", "reference"])
def report_dir(request, tmp_path_factory):
    if request.param == "reference":
        if not (REFERENCE / "report.html").is_file():
            pytest.skip("no committed reference report")
        return REFERENCE
    root = tmp_path_factory.mktemp("browser")
    fabricate_results(root, corrupt=True)
    report.build_report(root)
    return root


def _leading_number(text):
    m = re.match(r"[+\-−]?\d*\.?\d+", text.strip())
    return float(m.group(0).replace("−", "-")) if m else None


def test_report_in_chromium(report_dir, tmp_path):
    page = tmp_path / "report_check.html"  # beside a copy of tables/, so relative links would resolve too
    page.write_text((report_dir / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(_flags(profile) + ["--window-size=1280,900", "--virtual-time-budget=15000",
                                                 "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"check script did not run; chromium rc={proc.returncode}, stderr tail: {proc.stderr[-800:]}"
    r = json.loads(htmllib.unescape(m.group(1)))
    # every figure loads, and each has its caption
    n_plots = len(list((report_dir / "plots").glob("*.png")))
    assert r["n_images"] == r["n_figures"] == n_plots >= 7
    assert r["broken"] == [], f"images that did not load: {r['broken']}"
    assert all(w > 300 for w in r["widths"])
    # a TOC link lands on its section
    assert r["toc_text"] == "Time per step" and r["hash"] == "#timing"
    assert r["target_heading"].startswith("Time per step")
    assert r["scroll_y"] > 0 and abs(r["target_top"]) <= 2, r
    # a click sorts Table 1 by that column, numbers as numbers; a second click reverses
    assert r["table1_head"][0] == "variant" and r["asc_sort"] == "ascending" and r["desc_sort"] == "descending"
    asc = [_leading_number(t) for t in r["asc"]]
    desc = [_leading_number(t) for t in r["desc"]]
    numbers = [x for x in asc if x is not None]
    assert len(numbers) >= 5 and numbers == sorted(numbers) and asc[:len(numbers)] == numbers
    assert [x for x in desc if x is not None] == sorted(numbers, reverse=True)


def test_report_screenshot(report_dir, tmp_path):
    keep = os.environ.get("SSVAE_REPORT_SCREENSHOT")
    shot = Path(keep) if keep and report_dir == REFERENCE else tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(_flags(profile) + [f"--screenshot={shot}", "--window-size=1400,2600",
                                          (report_dir / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 50_000
