"""report.html in a real browser: headless Chromium loads it from disk (no server); every image decodes
and Table 1 shows every variant of the grid.

Needs Chromium (Debian/Ubuntu: ``apt-get install -y chromium``); skipped with a reason without it.
Set ``SSVAE_REPORT_SCREENSHOT=/path.png`` to keep a full-page screenshot for a look by eye.
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
from tests.report_fixtures import fabricate_results, variants


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium not installed (apt-get install -y chromium)")

# Appended to a copy of report.html: once the page (and its inline images) has loaded, write what we
# check into the DOM, where --dump-dom prints it.
CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {
    n_images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
    widths: imgs.map(function (i) { return i.naturalWidth; }),
    table1: Array.prototype.map.call(document.querySelectorAll("#table1 thead th"), function (th) { return th.textContent; }),
    table1_rows: document.querySelectorAll("#table1 tbody tr").length
  };
  var pre = document.createElement("pre");
  pre.id = "report-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _flags(profile):
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    fabricate_results(root, corrupt=True)
    report.build_report(root)
    return root


def test_report_renders_in_chromium(report_dir):
    page = report_dir / "report_check.html"
    page.write_text((report_dir / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(_flags(profile) + ["--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"check script did not run; chromium rc={proc.returncode}, stderr tail: {proc.stderr[-800:]}"
    result = json.loads(htmllib.unescape(m.group(1)))
    assert result["n_images"] == 6
    assert result["broken"] == [], f"images that did not load: {result['broken']}"
    assert all(w > 100 for w in result["widths"])
    assert result["table1"] == ["labels", *[report.variant_label(e, a) for e, a in variants()]]
    assert result["table1_rows"] == 2


def test_report_screenshot(report_dir):
    shot = Path(os.environ.get("SSVAE_REPORT_SCREENSHOT") or report_dir / "report.png")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(_flags(profile) + [f"--screenshot={shot}", "--window-size=1400,4000",
                                          (report_dir / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000
