"""MNIST for the semi-supervised VAE, split as in Pyro's tutorial.

* train: the first 50,000 training images, of which ``labels`` (``labels/10`` per digit,
  chosen by seed) keep their label and the rest are unlabeled;
* valid: the last 10,000 training images;
* test: the 10,000 test images.

Pixels are scaled to [0, 1] and flattened to 784; labels are one-hot float vectors, as in
Pyro's example. All tensors live on the run's device and mini-batches are index slices,
so an epoch costs no per-item Python work.

The data folder comes from ``data_dir``, else ``$SSVAE_DATA_DIR``, else ``./data``; it
holds ``MNIST/raw/`` in torchvision's layout. Where none of the four files is there, torchvision
downloads them unless ``download=False`` (or ``$SSVAE_NO_DOWNLOAD=1``); a folder holding some of them
(or a broken link to one) is never downloaded over: the error says which file is wrong.
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch

from .config import NUM_CLASSES, TRAIN_SIZE, VALID_SIZE, resolve_labels
from .errors import ConfigError, DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: the shape each raw file must declare (images: N x 28 x 28, labels: N)
RAW_SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
              "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}
DOWNLOAD_TIMEOUT_S = 20


def default_data_dir() -> Path:
    return Path(os.environ.get("SSVAE_DATA_DIR") or "data")


def _have_raw(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / f).is_file() for f in RAW_FILES)


def _present_raw(root: Path) -> list:
    """The raw files that exist under ``root/MNIST/raw`` as names, a broken link included."""
    return [f for f in RAW_FILES if os.path.lexists(Path(root) / "MNIST" / "raw" / f)]


def _check_partial(root: Path) -> None:
    """DataError naming what is wrong where some of MNIST's files exist but not all four can be read.

    A folder that holds any of the four files is never downloaded over: a broken link (e.g. a relative
    link made from another folder) or a missing file is reported as such, whatever the path looks like.
    """
    raw = Path(root) / "MNIST" / "raw"
    for name in RAW_FILES:
        path = raw / name
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path} is a broken link (to {os.readlink(path)}, which does not exist from there): "
                            f"link to an existing file, or set SSVAE_DATA_DIR to an absolute path")
        if path.exists() and not path.is_file():
            raise DataError(f"{path} is not a file: the MNIST folder is damaged; delete it and download MNIST again")
    missing = [name for name in RAW_FILES if not (raw / name).exists()]
    raise DataError(f"MNIST in {raw} is incomplete: {', '.join(missing)} missing (nothing is downloaded over "
                    f"existing files); add them, or delete the folder and download MNIST again")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_HASHES: dict = {}


def raw_hashes(root: os.PathLike) -> dict:
    """``{file name: sha256}`` of the four MNIST files in ``root/MNIST/raw`` (cached per size and mtime)."""
    out = {}
    for name in RAW_FILES:
        path = Path(root) / "MNIST" / "raw" / name
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(path)
        out[name] = _HASHES[key]
    return out


def idx_shape(path: Path) -> Tuple[int, ...]:
    """The shape a uint8 IDX file declares; DataError if its header or its length is wrong."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] > 4:
            raise DataError(f"{path} is not a uint8 IDX file (MNIST raw format)")
        dims = fh.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        raise DataError(f"{path} is truncated: its header is cut short; delete it and download MNIST again")
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
    n = 1
    for d in shape:
        n *= d
    size = path.stat().st_size
    if size != 4 + 4 * len(shape) + n:
        raise DataError(f"{path} is truncated or padded: {size} bytes, expected {4 + 4 * len(shape) + n} "
                        f"for shape {shape}; delete it and download MNIST again")
    return shape


def check_raw(root: os.PathLike) -> dict:
    """Check the four raw files (IDX headers, lengths, MNIST's shapes) without reading the pixels.

    Returns their sha256 (:func:`raw_hashes`). A truncated file, or one whose shape is not the one
    its name promises (e.g. a label file under an image file's name), is a one-line DataError.
    """
    raw = Path(root) / "MNIST" / "raw"
    for name, want in RAW_SHAPES.items():
        shape = idx_shape(raw / name)
        if shape != want:
            raise DataError(f"{raw / name} holds shape {shape}, expected {want} for {name}: "
                            f"the MNIST files are mismatched; delete them and download MNIST again")
    return raw_hashes(root)


def read_labels(root: os.PathLike) -> torch.Tensor:
    """The 60,000 training labels (a 60 kB read)."""
    return read_idx(Path(root) / "MNIST" / "raw" / "train-labels-idx1-ubyte").long()


def balanced_capacity(train_labels: torch.Tensor, train_size: int = TRAIN_SIZE) -> Tuple[int, int, int]:
    """(the largest class-balanced label count, the rarest digit, its count) among the first ``train_size``."""
    counts = torch.bincount(train_labels[:train_size], minlength=NUM_CLASSES)
    digit = int(counts.argmin())
    return int(counts[digit]) * NUM_CLASSES, digit, int(counts[digit])


def check_label_capacity(labels: int, train_labels: torch.Tensor, train_size: int = TRAIN_SIZE) -> None:
    """ConfigError when ``labels`` is more than a class-balanced subset of the training pool can hold."""
    cap, digit, count = balanced_capacity(train_labels, train_size)
    if labels > cap:
        raise ConfigError(f"label count {labels} is above what a class-balanced subset of the first {train_size} "
                          f"training images can hold: {count} images of digit {digit}, so at most {cap}")


def locate_mnist(data_dir: Optional[os.PathLike] = None, download: Optional[bool] = None) -> Path:
    """Return the folder holding ``MNIST/raw``, downloading it there if allowed.

    Raises :class:`DataError` (one line, naming the folder and the fix) if it is absent and
    cannot be downloaded.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if _have_raw(root):
        return root
    if _present_raw(root):
        _check_partial(root)
    if download is None:
        download = os.environ.get("SSVAE_NO_DOWNLOAD", "") not in ("1", "true", "yes")
    if not download:
        raise DataError(f"MNIST not found in {root}/MNIST/raw and downloads are off: "
                        f"set SSVAE_DATA_DIR (or --data-dir) to a folder holding MNIST/raw")
    if root.exists() and not root.is_dir():
        raise DataError(f"data folder {root} is a file: set SSVAE_DATA_DIR to a folder")
    import torchvision

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for train in (True, False):
            torchvision.datasets.MNIST(root=str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        reason = str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
        raise DataError(f"MNIST not found in {root}/MNIST/raw and the download failed ({reason[:120]}): "
                        f"set SSVAE_DATA_DIR (or --data-dir) to a folder holding MNIST/raw") from None
    finally:
        socket.setdefaulttimeout(old)
    if not _have_raw(root):
        raise DataError(f"MNIST download into {root} left no MNIST/raw files")
    return root


@dataclass
class Split:
    """Images ``x`` (N, 784) in [0, 1] and one-hot labels ``y`` (N, 10), on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def digits(self) -> torch.Tensor:
        return self.y.argmax(-1)

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive index slices (no shuffling): for evaluation."""
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


@dataclass
class SSData:
    """The four parts of the semi-supervised problem, plus provenance."""

    sup: Split
    unsup: Split
    valid: Split
    test: Split
    sup_index: torch.Tensor  # indices of the labeled images among the 50,000 (CPU, long)
    unsup_index: torch.Tensor  # indices of the unlabeled ones
    sha256: str  # of the training-image file
    root: str
    hashes: Optional[dict] = None  # sha256 of each of the four raw files (raw_hashes)

    @property
    def device(self) -> torch.device:
        return self.sup.x.device


def one_hot(digits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return torch.nn.functional.one_hot(digits.long(), num_classes).float()


def balanced_subset(digits: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` items, ``n/10`` per class, drawn without replacement by ``seed``.

    Deterministic in (digits, n, seed) and independent of torch's global RNG. Returned sorted.
    """
    n = resolve_labels(n)
    per_class = n // NUM_CLASSES
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in range(NUM_CLASSES):
        members = (digits == c).nonzero(as_tuple=True)[0]
        if len(members) < per_class:
            raise DataError(f"only {len(members)} images of digit {c}, cannot label {per_class}")
        perm = torch.randperm(len(members), generator=gen)
        chosen.append(members[perm[:per_class]])
    return torch.cat(chosen).sort().values


def read_idx(path: Path) -> torch.Tensor:
    """A uint8 IDX file (MNIST's raw format: 0x0000, type 0x08, ndim, big-endian int32 sizes)."""
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (MNIST raw format)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n = 1
    for d in shape:
        n *= d
    if len(raw) != header + n:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, expected {header + n} "
                        f"for shape {shape}; delete it and download MNIST again")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def load_mnist_tensors(root: Path) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x uint8 [60000,28,28], train_y, test_x, test_y) from ``root/MNIST/raw``.

    Read directly from the IDX files torchvision keeps there (the same bytes torchvision's
    ``MNIST`` dataset decodes), without importing torchvision: a cell starts 1.5 s sooner.
    """
    raw = Path(root) / "MNIST" / "raw"
    train_x, train_y, test_x, test_y = (read_idx(raw / f) for f in RAW_FILES)
    return train_x, train_y.long(), test_x, test_y.long()


def load(labels: int, seed: int, device: str = "cpu", data_dir: Optional[os.PathLike] = None,
         download: Optional[bool] = None) -> SSData:
    """Load MNIST and split it for a run with ``labels`` labeled images chosen by ``seed``."""
    root = locate_mnist(data_dir, download)
    train_x, train_y, test_x, test_y = load_mnist_tensors(root)
    hashes = raw_hashes(root)
    data = split(train_x, train_y, test_x, test_y, labels=labels, seed=seed, device=device,
                 sha256=hashes[TRAIN_IMAGES], root=str(root))
    data.hashes = hashes
    return data


def split(train_x, train_y, test_x, test_y, labels: int, seed: int, device: str = "cpu",
          sha256: str = "", root: str = "", train_size: int = TRAIN_SIZE) -> SSData:
    """Split raw uint8 images and integer labels into labeled/unlabeled/valid/test parts."""

    def prep(x, y):
        x = x.reshape(x.shape[0], -1).to(device=device, dtype=torch.float32) / 255.0
        return Split(x, one_hot(y).to(device))

    labels = resolve_labels(labels)
    pool_x, pool_y = train_x[:train_size], train_y[:train_size]
    sup_index = balanced_subset(pool_y, labels, seed)
    mask = torch.ones(len(pool_y), dtype=torch.bool)
    mask[sup_index] = False
    unsup_index = mask.nonzero(as_tuple=True)[0]
    valid_end = train_size + VALID_SIZE if len(train_x) >= train_size + VALID_SIZE else len(train_x)
    return SSData(
        sup=prep(pool_x[sup_index], pool_y[sup_index]),
        unsup=prep(pool_x[unsup_index], pool_y[unsup_index]),
        valid=prep(train_x[train_size:valid_end], train_y[train_size:valid_end]),
        test=prep(test_x, test_y),
        sup_index=sup_index,
        unsup_index=unsup_index,
        sha256=sha256,
        root=root,
    )
