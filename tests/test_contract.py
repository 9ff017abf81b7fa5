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


class _Decoder(torch.nn.Module):
    """p(z) p(x | z) with z in the data plate, its event declared or (the bug) not."""

    def __init__(self, z_event=True):
        super().__init__()
        self.z_event = z_event
        self.decoder = torch.nn.Linear(4, 64)

    def forward(self, x):
        pyro.module("decoder", self.decoder)
        with data_plate(x):
            prior = dist.Normal(x.new_zeros(x.shape[0], 4), 1.0)
            z = pyro.sample("z", prior.to_event(1) if self.z_event else prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


class _Encoder(torch.nn.Module):
    def __init__(self, z_event=True):
        super().__init__()
        self.z_event = z_event
        self.encoder = torch.nn.Linear(64, 4)

    def forward(self, x):
        pyro.module("encoder", self.encoder)
        with data_plate(x):
            q = dist.Normal(self.encoder(x), 1.0)
            pyro.sample("z", q.to_event(1) if self.z_event else q)


@pytest.mark.parametrize("role", ["model", "guide"])
def test_a_missing_to_event_gets_the_contracts_message_and_its_advice_works(role):
    """Issue 23: a latent's event dims left as batch dims clash with the data plate; Pyro
    says 'Shape mismatch inside plate', the contract names the site, shapes and fix."""
    from pyro_aevb import fit

    model, guide = _Decoder(z_event=role != "model"), _Encoder(z_event=role != "guide")
    pattern = (
        rf"the {role}'s site 'z' does not fit plate 'data': its distribution has 4 elements "
        r"at dim -1, where the plate has 10 .*\.to_event\(n\)"
    )
    with pytest.raises(ContractError, match=pattern):
        check_pair(model, guide, {"x": X})
    with pytest.raises(ContractError, match=pattern.replace("10", "5")):
        fit(model, guide, {"x": X}, epochs=1, batch_size=5, progress=False)
    # the advice followed: .to_event(1) on the site
    summary = check_pair(_Decoder(), _Encoder(), {"x": X})
    assert summary.latent_sites == ["z"]


class _GlobalMean(torch.nn.Module):
    """x_i ~ N(mu, 1) with one mu for all data points (a global latent), a call counter."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with data_plate(x):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[1]]).to_event(1), obs=x)


class _GlobalMeanGuide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        pyro.module("mean_guide", self)
        pyro.sample("mu", dist.Normal(self.loc, 1.0))


def test_a_global_latent_with_a_test_set_is_refused_before_the_first_step(tmp_path):
    """Issue 23: the per-epoch test ELBO is per data point, which a global latent rules out;
    fit refuses before any step (before: after epoch 1), and its advice works."""
    from pyro_aevb import fit

    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(1)) + 2.0
    model, guide = _GlobalMean(), _GlobalMeanGuide()
    with pytest.raises(ContractError, match=r"\['mu'\] are global.*fit without test data"):
        fit(model, guide, {"x": x}, {"x": x[:5]}, epochs=2, batch_size=10, progress=False,
            run_dir=tmp_path / "run")  # fmt: skip
    assert model.calls <= 2  # the contract check's runs of the model, no training step
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # the advice followed: without test data the pair trains
    result = fit(model, guide, {"x": x}, epochs=2, batch_size=10, progress=False)
    assert result.epochs_completed == 2 and model.calls > 2


class _WholeBatchEvent(_Decoder):
    """The likelihood's event declared two dims deep: it takes in the data points."""

    def forward(self, x):
        pyro.module("decoder", self.decoder)
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 4), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(2), obs=x)


def test_an_event_that_takes_in_the_data_points_is_refused():
    """Issue 23: .to_event(2) on a (B, D) likelihood inside the data plate made every data
    point's log-density the whole batch's (a B-fold ELBO), silently; now the contract
    names the site, its shape and event_dim, and the event_dim to use."""
    from pyro_aevb import fit

    pattern = (
        r"site 'x' has value shape \(10, 64\) and event_dim 2, so its event takes in dim -1 "
        r"of the data plate 'data'.*\.to_event\(1\) at most"
    )
    with pytest.raises(ContractError, match=pattern):
        check_pair(_WholeBatchEvent(), _Encoder(), {"x": X})
    with pytest.raises(ContractError, match=pattern.replace("10", "5")):
        fit(_WholeBatchEvent(), _Encoder(), {"x": X}, epochs=1, batch_size=5, progress=False)
