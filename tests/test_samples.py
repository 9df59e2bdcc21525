"""The generated-digit figure: Kingma et al.'s analogy layout (z shared per column, y per row)."""
import shutil
from types import SimpleNamespace

import torch

from bench import report
from bench.core.schema import ANALOGY_SUFFIX
from bench.run.tasks import _save_samples
from ssvae.model import SSVAE
from tests.report_fixtures import fabricate_results


def test_saved_samples_share_one_z_per_column():
    torch.manual_seed(0)
    model = SSVAE(input_size=16, z_dim=3, hidden=(8,))
    spec = {"samples_per_class": 4, "id": "enum+aux_L100_s0"}
    rel = _save_samples(SimpleNamespace(ss=model), spec)
    assert rel == f"samples/enum+aux_L100_s0{ANALOGY_SUFFIX}"
    arr = torch.from_numpy(spec["_extra_files"][rel].astype("float32"))
    assert arr.shape == (10, 4, 4, 4)
    zs = torch.randn(4, 3, generator=torch.Generator().manual_seed(2024))
    with torch.no_grad():
        for y in range(10):
            ys = torch.nn.functional.one_hot(torch.full((4,), y), 10).float()
            expected = (torch.sigmoid(model.decoder([zs, ys])) * 255).round().reshape(4, 4, 4)
            assert torch.equal(arr[y], expected), f"row y={y} does not decode the shared z_j"
    assert not torch.equal(arr[:, 0], arr[:, 1])  # columns hold different styles


def test_report_says_which_layout_it_shows(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    fabricate_results(new)
    shutil.copytree(new, old)
    for p in (old / "samples").glob(f"*{ANALOGY_SUFFIX}"):
        p.rename(p.with_name(p.name[: -len(ANALOGY_SUFFIX)] + ".npy"))
    assert "z fixed per column" in report.build_report(new)["report.md"].read_text()
    old_md = report.build_report(old)["report.md"].read_text()
    assert "independent z per image" in old_md and "z fixed per column" not in old_md
