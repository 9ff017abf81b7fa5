"""Bad input gets a clear error before training starts (no step taken, nothing written)."""

import pytest
import torch

from pyro_aevb import ContractError, fit
from pyro_aevb.data import Dataset, load_dataset
from pyro_aevb.device import resolve_device
from tests.conftest import tiny_vae


def _fails_before_training(tmp_path, exc, match, *args, **kwargs):
    model, guide = kwargs.pop("pair", None) or tiny_vae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=match):
        fit(model, guide, *args, epochs=1, run_dir=tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "checkpoint.pt").exists()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed: a step was taken"


def test_nan_in_data(tmp_path):
    x = torch.rand(50, 64)
    x[17, 3] = float("nan")
    _fails_before_training(
        tmp_path, ValueError, "NaN or infinite.*index 17", {"x": x}, transform="dynamic"
    )


def test_wrong_dimensions(tmp_path, digits):
    train, _ = digits
    pair = tiny_vae(x_dim=784)
    _fails_before_training(
        tmp_path,
        ValueError,
        r"expects x of shape \(batch, 784\), got \(100, 64\)",
        train,
        transform="dynamic",
        pair=pair,
    )
    images = train.rows()  # (N, 8, 8) where the VAE needs (N, 64)
    _fails_before_training(tmp_path, ValueError, "flatten images", images, transform="dynamic")


def test_non_binary_data_for_bernoulli_anywhere_in_the_data(tmp_path):
    x = torch.bernoulli(torch.full((300, 64), 0.3), generator=torch.Generator().manual_seed(0))
    x[250, 5] = 0.5  # outside the first batch: only the whole-data check sees it
    _fails_before_training(
        tmp_path, ContractError, "1 data point\\(s\\), first at index 250.*binarize", {"x": x}
    )


def test_values_outside_unit_interval_for_continuous_bernoulli(tmp_path):
    x = torch.rand(300, 64)
    x[120, 0] = 1.5
    pair = tiny_vae(likelihood="continuous_bernoulli")
    _fails_before_training(
        tmp_path, ContractError, "index 120.*values in \\[0, 1\\]", {"x": x}, pair=pair
    )


def test_bad_test_data_is_caught_too(tmp_path, digits):
    train, _ = digits
    test = {"x": torch.full((20, 64), 2.0)}
    with pytest.raises(ContractError, match="outside the support"):
        fit(*tiny_vae(), train, {"x": test["x"]}, transform=None, epochs=1, progress=False)


def test_unknown_objective_dataset_transform_and_likelihood(tmp_path, digits):
    train, _ = digits
    _fails_before_training(
        tmp_path,
        ValueError,
        "unknown objective 'elbow'.*'elbo'",
        train,
        objective="elbow",
        transform="dynamic",
    )
    _fails_before_training(tmp_path, ValueError, "unknown transform", train, transform="binary")
    _fails_before_training(
        tmp_path,
        ValueError,
        "takes no option.*'beta'",
        train,
        transform="dynamic",
        objective_options={"beta": 2.0},
    )
    with pytest.raises(ValueError, match="unknown data set 'mnist-full'"):
        load_dataset("mnist-full")
    with pytest.raises(ValueError, match="unknown likelihood 'gaussian'"):
        tiny_vae(likelihood="gaussian")


def test_model_guide_site_mismatch(tmp_path, digits):
    train, _ = digits
    model, _ = tiny_vae(z_dim=4)
    _, guide = tiny_vae(z_dim=5)
    _fails_before_training(
        tmp_path,
        ContractError,
        "site 'z' has shape",
        train,
        transform="dynamic",
        pair=(model, guide),
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_cuda(tmp_path, digits):
    train, _ = digits
    _fails_before_training(
        tmp_path, ValueError, "no CUDA device", train, device="cuda", transform="dynamic"
    )
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="labels must be int64"):
        Dataset(torch.rand(4, 2), torch.zeros(4), None, (2,), "toy")


def test_unknown_guide_covariance_and_missing_labels_are_named(digits):
    from pyro_aevb import label_usage
    from pyro_aevb.pairs import get_pair

    train, _ = digits
    with pytest.raises(ValueError, match="unknown guide covariance 'banded'"):
        get_pair("fa").build(train, z_dim=2, covariance="banded", bias=False)
    model, guide = tiny_vae()
    with pytest.raises(ValueError, match="needs a 'y' field"):
        label_usage(model, guide, {"x": train.x[:10]}, num_particles=2)
