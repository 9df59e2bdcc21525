"""Passes here, fails there: the suite's machine-dependent pieces under a second environment.

Three things once made `make test` green in CI and red on a user's machine: a relative ``SSVAE_DATA_DIR``
(the tests' links to MNIST dangled, and the data check then tried a download over a folder whose files
existed), PNG bytes compared across machines (a font or a library version moves a few pixels), and a
stored regression baseline from other library versions. These tests put the first two under the other
environment on this one machine: a relative data path, a network that fails instead of one that is off,
and a report rebuilt in a process that calls itself another CPU, another torch and a fresh font cache.
(The baseline's versions are checked in tests/test_regress*.py.)
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from ssvae import data as ssdata
from ssvae.errors import DataError

from .conftest import REPO, mnist_dir, needs_mnist, offline

RAW = ssdata.RAW_FILES


def _no_download(monkeypatch):
    """torchvision's download fails the test if it is ever tried."""
    import torchvision

    def refuse(*a, **k):
        raise AssertionError("a download was tried over a folder whose files exist")

    monkeypatch.setattr(torchvision.datasets, "MNIST", refuse)
    monkeypatch.delenv("SSVAE_NO_DOWNLOAD", raising=False)


def _fake_raw(root: Path, names=RAW) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        (raw / name).write_bytes(b"\0\0\x08\x01\0\0\0\0")
    return raw


def test_a_broken_link_says_so_and_downloads_nothing(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    raw = _fake_raw(tmp_path / "d")
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").symlink_to(Path("../../../nowhere/train-images-idx3-ubyte"))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is a broken link .*absolute path"):
        ssdata.locate_mnist(tmp_path / "d")


def test_an_incomplete_folder_says_which_file_and_downloads_nothing(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    _fake_raw(tmp_path / "d", names=RAW[:3])
    with pytest.raises(DataError, match=r"incomplete: t10k-labels-idx1-ubyte missing"):
        ssdata.locate_mnist(tmp_path / "d")


def test_an_empty_folder_still_downloads(tmp_path, monkeypatch):
    """The download path itself is kept for a folder with none of the files (refused here: offline)."""
    offline(monkeypatch)
    monkeypatch.delenv("SSVAE_NO_DOWNLOAD", raising=False)
    calls = []
    import torchvision

    def fake(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)
    with pytest.raises(DataError, match="the download failed"):
        ssdata.locate_mnist(tmp_path / "empty")
    assert calls and calls[0][2] is True


@needs_mnist
@pytest.mark.parametrize("kind, pattern", [("truncated", r"is truncated or padded"), ("mismatched", r"the MNIST files are mismatched")])
def test_bad_mnist_under_a_relative_data_dir(tmp_path, monkeypatch, capsys, kind, pattern):
    """`make test` as the README types it once set SSVAE_DATA_DIR relative: the same one-line error as with
    an absolute path, with downloads allowed and the network failing (not switched off)."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("SSVAE_DATA_DIR", os.path.relpath(mnist_dir(), here))
    _no_download(monkeypatch)
    offline(monkeypatch)
    src = mnist_dir()  # as the tests make their links: from the environment's data path
    raw = tmp_path / "bad" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW:
        (raw / name).symlink_to(src / "MNIST" / "raw" / name)
    bad = "train-labels-idx1-ubyte" if kind == "truncated" else "train-images-idx3-ubyte"
    (raw / bad).unlink()
    if kind == "truncated":
        (raw / bad).write_bytes((src / "MNIST" / "raw" / bad).read_bytes()[:-100])
    else:
        (raw / bad).symlink_to(src / "MNIST" / "raw" / "train-labels-idx1-ubyte")
    capsys.readouterr()
    code = main(["run", "--preset", "smoke", "--data-dir", str(tmp_path / "bad"), "--out", str(tmp_path / "out"),
                 "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "download failed" not in err[0] and "downloads are off" not in err[0] and re.search(pattern, err[0]), err[0]


def test_makefile_hands_on_an_absolute_data_path(tmp_path):
    """The README's `make test` with a relative SSVAE_DATA_DIR (the Makefile's own default is relative)."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(["make", "-s", "-p", "-n", "test"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "SSVAE_DATA_DIR": "../shared/data"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("SSVAE_DATA_DIR")]
    assert lines, out.stderr[-500:]
    value = lines[0].split("=", 1)[1].strip()
    assert os.path.isabs(value), lines[0]
    assert Path(value).resolve() == (REPO / "../shared/data").resolve()  # ../shared may be a link


# -- the report, rebuilt as another machine would ---------------------------------------------------

ELSEWHERE = r'''
import socket, sys, platform
import torch
import bench.core.provenance as prov
torch.__version__ = "9.9.9+elsewhere"
prov.cpu_name = lambda: "Intel(R) Xeon(R) Processor"
prov.host = lambda: "elsewhere"
platform.node = lambda: "elsewhere"
def _refuse(*a, **k):
    raise OSError("network unreachable (simulated)")
socket.create_connection = _refuse
socket.socket.connect = _refuse
from bench.report import build_report
build_report(sys.argv[1])
'''


def _references():
    return [p for p in sorted((REPO / "results" / "reference").glob("*")) if (p / "tables").is_dir()
            and (p / "env.json").is_file()]


@pytest.mark.parametrize("src", _references() or [None], ids=lambda p: p.name if p else "none")
def test_report_is_the_same_data_on_another_machine(tmp_path, src):
    """A committed reference rebuilt from its result files alone, in a process that reports another CPU,
    another torch and another host, with a fresh matplotlib font cache and a failing network, gives the
    committed tables, report.md, the page's text and the same figures byte for byte (the report is a pure
    function of the folder; pixels aside, which a font or a library version moves on another machine)."""
    if src is None:
        pytest.skip("no committed reference")
    from tests.test_report import page_without_pixels

    dst = tmp_path / "real"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tables", "plots", "report.*", ".lock", "cache"))
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", ELSEWHERE, str(dst)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (dst / "tables").iterdir()) == sorted(p.name for p in (src / "tables").iterdir())
    for p in sorted((src / "tables").iterdir()):
        assert (dst / "tables" / p.name).read_bytes() == p.read_bytes(), p.name
    assert sorted(p.name for p in (dst / "plots").glob("*.png")) == sorted(p.name for p in (src / "plots").glob("*.png"))
    assert (dst / "report.md").read_text() == (src / "report.md").read_text()
    assert page_without_pixels((dst / "report.html").read_text()) == \
        page_without_pixels((src / "report.html").read_text())
    assert json.loads((dst / "env.json").read_text()) == json.loads((src / "env.json").read_text())
