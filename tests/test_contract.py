"""The model/guide contract check names what is wrong."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb import ContractError, check_pair, data_plate
from pyro_aevb.evaluation import importance_log_likelihood
from tests.conftest import tiny_vae

X = torch.bernoulli(torch.full((10, 64), 0.3), generator=torch.Generator().manual_seed(0))


def test_a_good_pair_is_summarized():
    model, guide = tiny_vae()
    summary = check_pair(model, guide, {"x": X, "y": torch.zeros(10, dtype=torch.int64)})
    assert summary.latent_sites == ["z"] and summary.observed_sites == ["x"]
    assert summary.data_dim == -1 and summary.max_plate_nesting == 1
    assert summary.observed_fields["x"][0] == "x"


def test_missing_and_extra_sites_are_named():
    model, _ = tiny_vae()

    def guide(x):
        with data_plate(x):
            pyro.sample("w", dist.Normal(torch.zeros(10, 4), 1.0).to_event(1))

    with pytest.raises(ContractError) as info:
        check_pair(model, guide, {"x": X})
    message = str(info.value)
    assert "does not sample the model's latent site(s) ['z']" in message
    assert "samples site(s) ['w'] that the model does not have" in message


def test_misshaped_site_is_named():
    model, _ = tiny_vae(z_dim=4)
    _, guide = tiny_vae(z_dim=3)
    with pytest.raises(
        ContractError, match=r"site 'z' has shape \(10, 3\) in the guide.*\(10, 4\)"
    ):
        check_pair(model, guide, {"x": X})


def test_event_dim_mismatch_is_named():
    model, _ = tiny_vae()

    def guide(x):
        with data_plate(x), pyro.plate("latent", 4):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ContractError, match="site 'z' has event_dim 0 in the guide but 1"):
        check_pair(model, guide, {"x": X})


def test_missing_data_plate_is_reported():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z.sum() * torch.ones_like(x)).to_event(2), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))

    with pytest.raises(ContractError, match=r"\['x'\] are not inside a plate over the data points"):
        check_pair(model, guide, {"x": X})


def test_data_plate_must_be_outermost():
    def model(x):
        with pyro.plate("pixels", 64, dim=-1), data_plate(x, dim=-2):
            pyro.sample("x", dist.Bernoulli(0.5), obs=x)

    with pytest.raises(ContractError, match="must be the outermost plate.*'pixels'"):
        check_pair(model, lambda x: None, {"x": X})


def test_missing_argument_is_named():
    def model(x, y):
        pass

    with pytest.raises(ContractError, match=r"model requires argument\(s\) \['y'\].*\['x'\]"):
        check_pair(model, lambda x: None, {"x": X})


def test_observed_values_outside_support_are_reported_with_a_hint():
    model, guide = tiny_vae()
    with pytest.raises(ContractError, match="outside the support of Independent.*binarize"):
        check_pair(model, guide, {"x": torch.full((10, 64), 0.5)})


def test_global_latents_are_rejected_for_per_datapoint_evaluation():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([64]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    assert check_pair(model, guide, {"x": X}).global_latent_sites == ["mu"]
    with pytest.raises(NotImplementedError, match=r"\['mu'\] are global"):
        importance_log_likelihood(model, guide, {"x": X}, num_particles=5)
