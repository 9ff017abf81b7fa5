"""Data sets, splits and transforms."""

import builtins
import gzip
import os

import numpy as np
import pytest
import torch

from pyro_aevb.data import (
    DEBIAN_FASHION_MNIST,
    Dataset,
    Dequantization,
    DynamicBinarization,
    FixedBinarization,
    ThresholdBinarization,
    get_transform,
    load_digits,
    load_fashion_mnist,
    load_idx_directory,
    load_mnist_subset,
    load_torchvision,
    read_idx,
    seeded_split,
    synthetic_factor_analysis,
    transform_test_set,
)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_subset()


def test_mnist_subset_split_is_fixed_and_documented(mnist):
    train, test = mnist
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape[1:] == (28, 28) and train.levels == 256
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) == 1.0
    # The documented split: default_rng(0).permutation(5000), first 1000 are the test set.
    train_idx, test_idx = seeded_split(5000, 1000, 0)
    assert np.array_equal(test_idx, np.sort(np.random.default_rng(0).permutation(5000)[:1000]))
    assert len(set(train_idx) | set(test_idx)) == 5000 and not set(train_idx) & set(test_idx)
    again_train, again_test = load_mnist_subset()
    assert torch.equal(again_test.x, test.x) and torch.equal(again_train.y, train.y)
    # All ten classes appear in both parts.
    assert set(test.y.tolist()) == set(range(10)) == set(train.y.tolist())


def test_digits_and_views():
    train, test = load_digits()
    assert (len(train), len(test)) == (1437, 360)
    assert train.flat().x.shape == (1437, 64)
    assert train.rows().x.shape == (1437, 8, 8)
    assert train.levels == 17 and float(train.x.max()) == 1.0


def test_dynamic_binarization_is_binary_and_fresh_each_draw(mnist):
    x = mnist[0].x[:200]
    g = torch.Generator().manual_seed(0)
    t = DynamicBinarization()
    a, b = t(x, g), t(x, g)
    for out in (a, b):
        assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    # The mean of many draws approaches the grey values (Bernoulli(x) has mean x).
    draws = torch.stack([t(x, g) for _ in range(400)]).mean(0)
    assert (draws - x).abs().max() < 5 * 0.5 / 20  # 5 standard errors at worst p = 0.5


def test_fixed_and_threshold_binarization_are_deterministic(mnist):
    x = mnist[1].x[:100]
    a, b = FixedBinarization(seed=3)(x), FixedBinarization(seed=3)(x)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, FixedBinarization(seed=4)(x))
    th = ThresholdBinarization(0.5)(x)
    assert torch.equal(th, (x > 0.5).float())


def test_dequantization_keeps_levels_and_lies_in_unit_interval(mnist):
    x = mnist[1].x[:100]
    out = Dequantization()(x, torch.Generator().manual_seed(0), levels=256)
    assert float(out.min()) >= 0.0 and float(out.max()) < 1.0
    # (k + u) / 256 with u in [0, 1): flooring recovers the integer level k.
    assert torch.equal(torch.floor(out * 256), torch.round(x * 255))
    with pytest.raises(ValueError, match="levels"):
        Dequantization()(x)


def test_test_set_is_transformed_once_with_a_fixed_seed(mnist):
    x = mnist[1].x[:50]
    t = get_transform("dynamic")
    assert torch.equal(transform_test_set(x, t, 256), transform_test_set(x, t, 256))


def test_unknown_transform_name():
    with pytest.raises(ValueError, match="unknown transform 'binary'.*dynamic"):
        get_transform("binary")


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for stem, n in [("train", 6), ("t10k", 4)]:
        _write_idx(
            tmp_path / f"{stem}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz
        )
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), gz)
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    train, test = load_idx_directory(tmp_path, "toy")
    assert (len(train), len(test)) == (6, 4)
    assert torch.allclose(train.x * 255, torch.from_numpy(images.astype(np.float32)))


def test_idx_reader_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="IDX"):
        load_idx_directory(tmp_path, "nothing")


@pytest.mark.skipif(
    not os.path.exists(DEBIAN_FASHION_MNIST), reason="Debian's dataset-fashion-mnist not installed"
)
def test_full_fashion_mnist_from_debian_package():
    train, test = load_fashion_mnist()
    assert train.x.shape == (60000, 28, 28) and test.x.shape == (10000, 28, 28)
    assert torch.equal(torch.bincount(test.y), torch.full((10,), 1000))


def test_missing_torchvision_gives_a_clear_message(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(RuntimeError, match="pyro-aevb\\[vision\\].*IDX files"):
        load_torchvision("mnist", "/tmp/nowhere")


def test_synthetic_factor_analysis_returns_true_parameters():
    train, test, params = synthetic_factor_analysis(num_train=4000, num_test=1000, seed=0)
    assert train.x.shape == (4000, 3) and test.x.shape == (1000, 3)
    assert params.W.shape == (3, 2)
    # The sample covariance of 4000 draws is close to W W^T + diag(psi).
    emp = torch.cov(train.x.T)
    assert (emp - params.covariance).abs().max() < 0.25
    # The exact evidence is a proper log-density that beats a mismatched Gaussian.
    ll = params.log_evidence(test.x).mean()
    wrong = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3)).log_prob(test.x)
    assert ll > wrong.mean()


def test_dataset_rejects_bad_arrays():
    with pytest.raises(ValueError, match="NaN or infinite values in 1 data point.*index 2"):
        x = torch.rand(5, 4)
        x[2, 1] = float("nan")
        Dataset(x, None, 256, (4,), "toy")
    with pytest.raises(ValueError, match="floating-point"):
        Dataset(torch.ones(5, 4, dtype=torch.int64), None, 256, (4,), "toy")
    with pytest.raises(ValueError, match="labels"):
        Dataset(torch.rand(5, 4), torch.zeros(4, dtype=torch.int64), 256, (4,), "toy")
