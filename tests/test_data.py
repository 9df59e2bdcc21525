"""The split of Pyro's tutorial: balanced, disjoint, seeded labeled subsets."""
import pytest
import torch

from ssvae import data as ssdata
from ssvae.config import resolve_labels
from ssvae.errors import ConfigError, DataError
from ssvae.train import epoch_schedule

from .conftest import mnist_dir, needs_mnist, synthetic_raw


def test_balanced_disjoint_and_seeded(synthetic_data):
    d = synthetic_data
    assert len(d.sup) == 100 and len(d.unsup) == 400
    assert torch.bincount(d.sup.digits, minlength=10).tolist() == [10] * 10
    assert set(d.sup_index.tolist()).isdisjoint(d.unsup_index.tolist())
    assert sorted(d.sup_index.tolist() + d.unsup_index.tolist()) == list(range(500))
    tx, ty, vx, vy = synthetic_raw()
    again = ssdata.split(tx, ty, vx, vy, labels=100, seed=0, train_size=500)
    other = ssdata.split(tx, ty, vx, vy, labels=100, seed=1, train_size=500)
    assert torch.equal(again.sup_index, d.sup_index)
    assert not torch.equal(other.sup_index, d.sup_index)
    # labels travel with their images
    assert torch.equal(d.sup.digits, ty[d.sup_index])


def test_pixels_scaled_and_validation_is_the_tail(synthetic_data):
    d = synthetic_data
    for part in (d.sup, d.unsup, d.valid, d.test):
        assert part.x.dtype == torch.float32 and 0.0 <= part.x.min() and part.x.max() <= 1.0
        assert part.y.shape[1] == 10 and torch.all(part.y.sum(-1) == 1)
    assert len(d.valid) == 100  # images 500..599 of the synthetic training set


@pytest.mark.parametrize("labels,fraction,expected", [(100, None, 100), (None, 0.02, 1000), (None, 1.0, 50000),
                                                      (None, 0.0013, 60)])
def test_label_counts_and_fractions(labels, fraction, expected):
    assert resolve_labels(labels, fraction) == expected


@pytest.mark.parametrize("labels,fraction,message", [
    (105, None, "not a multiple of 10"), (60000, None, "above the 50000"), (0, None, "must be positive"),
    (None, 0.0, r"outside \(0, 1\]"), (None, 1.5, r"outside \(0, 1\]"), (None, 0.00001, "fewer than 10")])
def test_bad_label_counts(labels, fraction, message):
    with pytest.raises(ConfigError, match=message):
        resolve_labels(labels, fraction)


def test_schedule_interleaves_like_pyro():
    kinds = epoch_schedule(3000, 47000, 200, 50000)
    assert len(kinds) == 250 and kinds.count("sup") == 15
    assert [i for i, k in enumerate(kinds) if k == "sup"] == list(range(1, 240, 16))
    kinds = epoch_schedule(100, 49900, 200, 50000)
    assert len(kinds) == 251 and [i for i, k in enumerate(kinds) if k == "sup"] == [1]
    assert epoch_schedule(50000, 0, 200, 50000) == ["sup"] * 250


def test_missing_data_without_download_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="MNIST not found in .* set SSVAE_DATA_DIR"):
        ssdata.load(100, 0, data_dir=tmp_path, download=False)


@needs_mnist
def test_real_mnist_split():
    d = ssdata.load(3000, 0, data_dir=mnist_dir())
    assert (len(d.sup), len(d.unsup), len(d.valid), len(d.test)) == (3000, 47000, 10000, 10000)
    assert torch.bincount(d.sup.digits, minlength=10).tolist() == [300] * 10
    assert set(d.sup_index.tolist()).isdisjoint(d.unsup_index.tolist())
    assert len(d.sha256) == 64
    assert torch.equal(ssdata.load(3000, 0, data_dir=mnist_dir()).sup_index, d.sup_index)
    assert abs(d.unsup.x.mean().item() - 0.1307) < 0.002


@needs_mnist
def test_idx_reader_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = ssdata.load_mnist_tensors(mnist_dir())
    train = torchvision.datasets.MNIST(root=str(mnist_dir()), train=True, download=False)
    test = torchvision.datasets.MNIST(root=str(mnist_dir()), train=False, download=False)
    for a, b in zip(ours, (train.data, train.targets, test.data, test.targets)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_truncated_idx_file_is_one_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ssdata.RAW_FILES:
        # a 3-image file cut short by 5 bytes
        (raw / name).write_bytes(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                 + bytes(3 * 784 - 5))
    with pytest.raises(DataError, match="truncated"):
        ssdata.load_mnist_tensors(tmp_path)
