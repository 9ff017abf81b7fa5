"""Pairs written as Pyro's examples write them fit and evaluate unchanged.

Each plate spelling and argument style is checked against the library's own
``data_plate`` spelling of the same pair: with the same seed the same noise is
drawn, so every step's loss and the parameters after training agree to float
precision. That is the mathematical fact under test: the minibatch objective is the
same per-data-point quantity (each point weighted ``N / B``, then divided by ``N``)
whatever the plate is called and whatever scale Pyro's plate itself applied.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import nn

from pyro_aevb import ContractError, check_pair, data_plate, evaluate, fit
from pyro_aevb import contract as contract_module
from pyro_aevb.arguments import ArgumentAdapter, one_hot, plan_batches, take_rows
from pyro_aevb.evaluation import importance_log_likelihood
from pyro_aevb.particles import summarize_pair
from pyro_aevb.plate import scale_to_data_set

N_TRAIN, X_DIM, Z_DIM = 120, 16, 3


def _data(n=N_TRAIN, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, X_DIM), 0.3), generator=g)


class Pair(nn.Module):
    """A small VAE as one nn.Module with ``model``/``guide`` methods (as Pyro's VAE
    example writes it), its data plate spelled one of several ways."""

    def __init__(self, spelling="library", num_data=N_TRAIN):
        super().__init__()
        torch.manual_seed(0)
        self.spelling, self.num_data = spelling, num_data
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.encoder = nn.Linear(X_DIM, 2 * Z_DIM)

    def plate(self, x, idx=None):
        s = self.spelling
        if s == "library":
            return data_plate(x)
        if s == "sized":
            return pyro.plate("data", x.shape[0])
        if s == "sizeless":
            return pyro.plate("data")
        if s == "renamed":
            return pyro.plate("z_minibatch", len(x))
        if s == "subsample":  # the user's own indices into the full data set
            return pyro.plate("data", self.num_data, subsample=idx)
        if s == "subsample_size":  # Pyro draws the indices (scaled N / B by Pyro itself)
            return pyro.plate("data", self.num_data, subsample_size=len(x))
        raise ValueError(s)

    def model(self, x, idx=None):
        pyro.module("decoder", self.decoder)
        with self.plate(x, idx):
            # the batch shape spelled out, as a plate without a size needs
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, idx=None):
        pyro.module("encoder", self.encoder)
        with self.plate(x, idx):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _fit(model, guide, train, test=None, **kwargs):
    pyro.clear_param_store()
    options = dict(epochs=2, batch_size=50, lr=1e-2, seed=3, progress=False)
    options.update(kwargs)
    result = fit(model, guide, train, test, **options)
    return [-row["train_elbo"] for row in result.history], result


def _state(pair):
    return {k: v.clone() for k, v in pair.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    """The library's own spelling: data_plate, fields by name."""
    pyro.clear_param_store()
    pair = Pair("library")
    losses, result = _fit(pair.model, pair.guide, {"x": _data(), "idx": torch.arange(N_TRAIN)})
    return losses, _state(pair), result


def _assert_same(losses, pair, reference):
    ref_losses, ref_state, _ = reference
    assert losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-6)
    for name, value in _state(pair).items():
        torch.testing.assert_close(value, ref_state[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spelling", ["sized", "sizeless", "renamed", "subsample"])
def test_every_plate_spelling_trains_like_data_plate(spelling, reference):
    """N / B where the plate does not apply it, never twice where it does (subsample):
    the same losses per step and the same parameters after 2 epochs (the last batch of
    each epoch has 20 points, so B varies)."""
    pair = Pair(spelling)
    losses, result = _fit(pair.model, pair.guide, {"x": _data(), "idx": torch.arange(N_TRAIN)})
    _assert_same(losses, pair, reference)
    assert result.summary.data_plate == ("z_minibatch" if spelling == "renamed" else "data")


def test_the_scale_of_each_site_is_one_over_batch_size():
    """Inside fit's binding every per-data-point site weighs N/B * 1/N = 1/B (by hand),
    also where Pyro's own subsampling already applied N/B (never N^2/B^2)."""
    x = _data(30)
    for spelling in ("library", "sized", "sizeless", "subsample", "subsample_size"):
        pair = Pair(spelling)
        bound = poutine.scale(scale_to_data_set(pair.guide, "data", N_TRAIN), 1.0 / N_TRAIN)
        from pyro_aevb.plate import full_data_size

        with full_data_size(N_TRAIN):
            trace = poutine.trace(bound).get_trace(x=x, idx=torch.arange(30))
        assert trace.nodes["z"]["scale"] == pytest.approx(1 / 30, rel=1e-12), spelling


class Renamed(nn.Module):
    """Pyro's semi-supervised example's argument names: ``xs`` (and an unused ``ys``)."""

    def __init__(self):
        super().__init__()
        self.inner = Pair("sized")

    def model(self, xs, ys=None):
        return self.inner.model(xs)

    def guide(self, xs, ys=None):
        return self.inner.guide(xs)


def test_renamed_arguments_mapped_with_arguments(reference):
    pair = Renamed()
    losses, _ = _fit(pair.model, pair.guide, {"x": _data()}, arguments={"xs": "x"})
    _assert_same(losses, pair.inner, reference)


def test_data_passed_under_the_argument_names(reference):
    pair = Renamed()
    losses, _ = _fit(pair.model, pair.guide, {"xs": _data()})
    _assert_same(losses, pair.inner, reference)


def test_positional_only_functions(reference):
    inner = Pair("sizeless")

    def model(x, /):
        return inner.model(x)

    def guide(x, /):
        return inner.guide(x)

    losses, _ = _fit(model, guide, {"x": _data()})
    _assert_same(losses, inner, reference)


def test_a_transform_applies_to_the_observed_field_whatever_its_name():
    """Grey values under the name 'xs' with transform='dynamic': binarized, then trained."""
    pair = Renamed()
    grey = torch.rand(N_TRAIN, X_DIM, generator=torch.Generator().manual_seed(0))
    losses, result = _fit(
        pair.model, pair.guide, {"xs": grey}, {"xs": grey[:40]}, transform="dynamic"
    )
    assert all(torch.isfinite(torch.tensor(losses))) and "test_elbo" in result.history[-1]


def test_adapt_maps_arguments_for_evaluate_too():
    pair = Renamed()
    model, guide = (ArgumentAdapter(f, {"xs": "x"}) for f in (pair.model, pair.guide))
    metrics = evaluate(model, guide, {"x": _data(30)}, num_particles=10).metrics()
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"] - 3 * metrics["test_elbo_se"]


def test_a_missing_argument_names_the_mapping():
    pair = Renamed()
    with pytest.raises(ContractError, match=r"arguments=\{'xs': '<field>'\}"):
        check_pair(lambda xs: pair.model(xs), lambda xs: pair.guide(xs), {"x": _data(10)})


def test_a_guide_plate_of_another_name_is_refused_naming_it():
    pair = Pair("library")

    def guide(x):
        with pyro.plate("batch", len(x)):
            loc, log_scale = pair.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    with pytest.raises(ContractError, match=r"'z' \(guide plates: \['batch'\]\) outside"):
        check_pair(pair.model, guide, {"x": _data(10)})

    def scaled_guide(x):
        with poutine.scale(scale=0.5):
            pair.guide(x)

    with pytest.raises(ContractError, match=r"scales latent site\(s\) 'z' \(model 1, guide 0.5"):
        check_pair(pair.model, scaled_guide, {"x": _data(10)})


def test_repeated_problems_collapse_into_one_line():
    """A sequence model whose 28 observed sites sit under a wrongly-sized plate: one line."""

    def model(x):
        with pyro.plate("seq", 7):
            for t in range(28):
                pyro.sample(f"x_{t}", dist.Bernoulli(0.5), obs=x[:7, 0])

    with pytest.raises(ContractError) as info:
        check_pair(model, lambda x: None, {"x": _data(10)})
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and "x_0" in lines[1] and "x_27" in lines[1]


class _GreyBernoulli(Pair):
    """Pyro's VAE example trains a Bernoulli on grey values, its own validation off."""

    def model(self, x, idx=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z_DIM), 1.0).to_event(1))
            likelihood = dist.Bernoulli(logits=self.decoder(z), validate_args=False)
            pyro.sample("x", likelihood.to_event(1), obs=x)


def test_bernoulli_on_grey_values_opts_out_of_the_support_check_with_one_warning():
    pair = _GreyBernoulli("sized")
    grey = torch.rand(20, X_DIM, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ContractError, match="binarize"):
        check_pair(pair.model, pair.guide, {"x": grey})
    contract_module._warned.discard("support")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(pair.model, pair.guide, {"x": grey}, check_support=False, epochs=1)
        _fit(pair.model, pair.guide, {"x": grey}, check_support=False, epochs=1)
    assert sum("support check" in str(w.message) for w in caught) == 1


def test_check_support_false_reaches_fits_per_epoch_test_evaluation():
    """Issue 21 #3: fit's option reaches the test ELBO of every epoch (before: the pair on
    grey values died after epoch 1, when the test set was checked again)."""
    pair = _GreyBernoulli("sized")
    g = torch.Generator().manual_seed(1)
    grey, grey_test = torch.rand(40, X_DIM, generator=g), torch.rand(20, X_DIM, generator=g)
    _, result = _fit(pair.model, pair.guide, {"x": grey}, {"x": grey_test}, check_support=False)
    assert result.epochs_completed == 2
    assert all(math.isfinite(row["test_elbo"]) for row in result.history)


def test_evaluate_takes_check_support_false_with_fits_warning():
    pair = _GreyBernoulli("sized")
    grey = torch.rand(20, X_DIM, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ContractError, match="binarize"):
        evaluate(pair.model, pair.guide, {"x": grey}, num_particles=5)
    contract_module._warned.discard("support")
    with pytest.warns(UserWarning, match="support check of observed values is off"):
        result = evaluate(pair.model, pair.guide, {"x": grey}, num_particles=5,
                          check_support=False)  # fmt: skip
    # Bernoulli log-densities of values in [0, 1] are negative: a valid bound, finite
    assert result.metrics()["test_log_likelihood"] < 0


class _GreyOptingOut(_GreyBernoulli):
    """The attribute route: the object whose methods are the model and guide opts out."""

    check_support = False


def test_the_check_support_attribute_is_seen_through_bound_methods():
    pair = _GreyOptingOut("sized")
    g = torch.Generator().manual_seed(3)
    grey, grey_test = torch.rand(40, X_DIM, generator=g), torch.rand(20, X_DIM, generator=g)
    assert not check_pair(pair.model, pair.guide, {"x": grey}).support_checked
    _, result = _fit(pair.model, pair.guide, {"x": grey}, {"x": grey_test})
    assert result.epochs_completed == 2 and not result.summary.support_checked
    evaluation = evaluate(pair.model, pair.guide, {"x": grey_test}, num_particles=5)
    assert math.isfinite(evaluation.metrics()["test_elbo"])


def test_ais_points_check_support_to_the_attribute_route_which_works():
    pair = _GreyBernoulli("sized")
    grey = torch.rand(6, X_DIM, generator=torch.Generator().manual_seed(4))
    options = dict(method="ais", num_chains=2, num_steps=3, num_leapfrog=2, step_size=0.2)
    with pytest.raises(ValueError, match=r"set check_support = False on the model"):
        evaluate(pair.model, pair.guide, {"x": grey}, check_support=False, **options)
    pair.check_support = False  # the advice followed
    metrics = evaluate(pair.model, pair.guide, {"x": grey}, **options).metrics()
    assert math.isfinite(metrics["test_log_likelihood_ais"])


def test_check_pair_names_summarize_pair_for_the_particle_probe():
    pair = Pair()
    with pytest.raises(TypeError, match=r"pyro_aevb\.particles\.summarize_pair"):
        check_pair(pair.model, pair.guide, {"x": _data(10)}, check_evaluation=True)
    # the advice followed: the same arguments to summarize_pair
    assert summarize_pair(pair.model, pair.guide, {"x": _data(10)}).particle_mode == "vectorized"


def test_integer_labels_given_to_a_one_hot_guide_are_named():
    def model(x, y):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(0.5).expand([X_DIM]).to_event(1), obs=x)

    def guide(x, y):
        nn.Linear(10, 2)(y)  # expects one-hot floats (B, 10)

    labels = torch.arange(10) % 10
    with pytest.raises(ContractError, match=r"\['y'\] are integer labels.*one_hot"):
        check_pair(model, guide, {"x": _data(10), "y": labels})
    assert one_hot(torch.tensor([2, -1]), 3)[0].tolist() == [0.0, 0.0, 1.0]
    assert torch.isnan(one_hot(torch.tensor([2, -1]), 3)[1]).all()


def test_enumerated_guide_sites_under_elbo_name_the_objective():
    pair = _M2()
    contract_module._warned.discard("objective-elbo")
    x = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(pair.model, pair.guide, {"xs": x}, objective="elbo", epochs=1)
    assert any("use objective='enum'" in str(w.message) for w in caught)


# -- a PackedSequence field ---------------------------------------------------------


def test_packed_sequences_are_sliced_per_batch():
    seqs = [torch.full((n, 2), float(i)) for i, n in enumerate([3, 1, 2, 3])]
    packed = nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    part = take_rows(packed, torch.tensor([3, 1]))
    padded, lengths = nn.utils.rnn.pad_packed_sequence(part, batch_first=True)
    assert lengths.tolist() == [3, 1] and padded[0, 0, 0] == 3 and padded[1, 0, 0] == 1


# -- semi-supervised (M2) -------------------------------------------------------------

NUM_CLASSES = 3


def _broadcast_cat(*tensors):
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class _M2(nn.Module):
    """Kingma et al. (2014)'s M2 as Pyro's ss_vae_M2 writes it: ``xs, ys=None``, a plate
    without a size, the label observed where given and enumerated where not."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.decoder = nn.Linear(Z_DIM + NUM_CLASSES, X_DIM)
        self.encoder_y = nn.Linear(X_DIM, NUM_CLASSES)
        self.encoder_z = nn.Linear(X_DIM + NUM_CLASSES, 2 * Z_DIM)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            prior = xs.new_ones(len(xs), NUM_CLASSES) / NUM_CLASSES
            ys = pyro.sample("y", dist.OneHotCategorical(prior), obs=ys)
            z = pyro.sample("z", dist.Normal(xs.new_zeros(len(xs), Z_DIM), 1.0).to_event(1))
            logits = self.decoder(_broadcast_cat(z, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    @config_enumerate
    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(_broadcast_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_semi_supervised_batches_are_labeled_or_unlabeled():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    missing = torch.arange(10) >= 3
    batches = plan_batches(perm, 4, missing)
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert all(bool(missing[b].all()) or not bool(missing[b].any()) for b in batches)


def test_a_semi_supervised_fit_with_missing_labels_trains_and_evaluates():
    x = _data()
    labels = torch.arange(N_TRAIN) % NUM_CLASSES
    labels[30:] = -1  # 30 of 120 labeled
    ys = one_hot(labels, NUM_CLASSES)
    pair = _M2()
    losses, result = _fit(pair.model, pair.guide, {"xs": x, "ys": ys}, objective="enum", epochs=3)
    # 30 labeled in 1 batch, 90 unlabeled in 2 of 50: 3 steps an epoch, losses finite
    assert result.history[-1]["step"] == 9
    assert all(torch.isfinite(torch.tensor(losses)))
    assert "y" in result.summary.enumerated_guide_sites
    before = pair.encoder_y.weight.clone()
    assert not torch.equal(before, _M2().encoder_y.weight)  # trained
    metrics = evaluate(pair.model, pair.guide, {"xs": x[:40]}, num_particles=20).metrics()
    # the bound holds: the importance-sampled log-likelihood is above the ELBO
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"] - 3 * metrics["test_elbo_se"]


def test_a_semi_supervised_fit_checks_each_kind_of_batch_once(monkeypatch):
    """Issue 19: labeled and unlabeled batches are checked once each, not per epoch."""
    import pyro_aevb.contract.check as check_module

    checked, real = [], check_module.trace_pair

    def spy(model, guide, batch):
        checked.append("ys" in batch and not bool(torch.isnan(batch["ys"]).any()))
        return real(model, guide, batch)

    monkeypatch.setattr(check_module, "trace_pair", spy)
    labels = torch.arange(N_TRAIN) % NUM_CLASSES
    labels[30:] = -1
    pair = _M2()
    train = {"xs": _data(), "ys": one_hot(labels, NUM_CLASSES)}
    _, result = _fit(pair.model, pair.guide, train, {"xs": _data(40, seed=1)}, objective="enum",
                     epochs=3)  # fmt: skip
    assert len(result.history) == 3 and "test_elbo" in result.history[-1]
    assert checked == [True, False]  # one labeled batch, one unlabeled


def test_a_required_label_argument_with_missing_labels_is_refused():
    pair = _M2()
    labels = one_hot(torch.tensor([0, 1, -1, 2] * 5), NUM_CLASSES)

    def model(xs, ys):
        return pair.model(xs, ys)

    with pytest.raises(ValueError, match="argument ys has no default: give it one"):
        _fit(model, pair.guide, {"xs": _data(20), "ys": labels}, objective="enum")


# -- evaluation of code that does not broadcast --------------------------------------


class _Masked(nn.Module):
    """A linear-Gaussian model whose decoder's mean is used only where ``mask`` is set,
    elsewhere the data themselves: ``unsafe`` writes it with boolean-mask indexing (which
    cannot take the extra leading dim of vectorized particles), else with torch.where."""

    def __init__(self, unsafe):
        super().__init__()
        torch.manual_seed(0)
        self.unsafe = unsafe
        self.decoder, self.encoder = nn.Linear(Z_DIM, X_DIM), nn.Linear(X_DIM, 2 * Z_DIM)

    def model(self, x, mask):
        pyro.module("masked", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            mean = self.decoder(z)
            if self.unsafe:
                full = x.clone()
                full[mask] = mean[mask]
            else:
                full = torch.where(mask, mean, x)
            pyro.sample("x", dist.Normal(full, 1.0).to_event(1), obs=x)

    def guide(self, x, mask):
        with pyro.plate("data", len(x)):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_mask_indexing_model_evaluates_through_the_particle_loop():
    g = torch.Generator().manual_seed(0)
    fields = {"x": torch.randn(40, X_DIM, generator=g), "mask": torch.rand(40, X_DIM) > 0.3}
    unsafe, safe = _Masked(unsafe=True), _Masked(unsafe=False)
    contract_module._warned.discard("particle-loop")
    with pytest.warns(UserWarning, match=r"one pass each.*x\[\.\.\., mask\]"):
        summary = summarize_pair(unsafe.model, unsafe.guide, fields)
    assert summary.particle_mode == "loop"
    safe_summary = summarize_pair(safe.model, safe.guide, fields)
    assert safe_summary.particle_mode == "vectorized"
    with torch.no_grad():
        a = importance_log_likelihood(unsafe.model, unsafe.guide, fields, 100, seed=1)
        b = importance_log_likelihood(safe.model, safe.guide, fields, 100, seed=2)
    # fit finds it before the first step and trains and evaluates through the loop
    _, result = _fit(unsafe.model, unsafe.guide, fields, fields, epochs=1)
    assert result.summary.particle_mode == "loop" and "test_elbo" in result.history[-1]
    for est_a, est_b in ((a.elbo, b.elbo), (a.log_likelihood, b.log_likelihood)):
        diff = est_a - est_b  # paired over data points; independent draws
        se = diff.std() / diff.numel() ** 0.5
        assert abs(float(diff.mean())) < 4 * float(se) + 1e-9


# -- PyroModule, PyroSample, AutoNormal ------------------------------------------------


def test_pyro_module_pair_with_a_pyro_sample_guide_and_an_autonormal_for_globals():
    """Global decoder weights with a prior (PyroSample) and an AutoNormal posterior next
    to an amortized guide for the per-data-point z; the contract check finds the
    parameters of both guides, fit trains them."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroSample

    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.decoder = PyroModule[nn.Linear](Z_DIM, X_DIM)
            self.decoder.weight = PyroSample(
                dist.Normal(0.0, 1.0).expand([X_DIM, Z_DIM]).to_event(2)
            )

        def forward(self, x):
            data = pyro.plate("data", x.shape[0])
            with data:
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z_DIM), 1.0).to_event(1))
            logits = self.decoder(z)  # its weights drawn once, outside the plate
            with data:
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    class Encoder(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = PyroModule[nn.Linear](X_DIM, 2 * Z_DIM)

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                loc, log_scale = self.net(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    torch.manual_seed(0)
    model, encoder = Model(), Encoder()
    weights = AutoNormal(poutine.block(model, hide=["z"]))

    def guide(x):
        weights(x)
        encoder(x)

    x = _data()
    summary = check_pair(model, guide, {"x": x})
    assert summary.global_latent_sites == ["decoder.weight"]
    assert any("encoder" in n or "net" in n for n in summary.guide_params)
    assert any("AutoNormal" in n for n in summary.guide_params)
    before = encoder.net.weight.detach().clone()
    losses, _ = _fit(model, guide, {"x": x}, epochs=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, encoder.net.weight.detach())


def test_a_whole_autonormal_guide_for_a_small_model_fits_and_evaluates():
    """An AutoNormal guide has one q(z_i) per training point: its plate must index the
    points (subsample=idx); evaluated on the training points it is a valid bound."""
    from pyro.infer.autoguide import AutoNormal

    decoder = nn.Linear(Z_DIM, X_DIM)

    def model(x, idx):
        pyro.module("decoder", decoder)
        with pyro.plate("data", N_TRAIN, subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    # Pyro's idiom for an autoguide under the user's subsample: hand it the same plate
    guide = AutoNormal(
        model, create_plates=lambda x, idx: pyro.plate("data", N_TRAIN, subsample=idx)
    )
    fields = {"x": _data(), "idx": torch.arange(N_TRAIN)}
    losses, result = _fit(model, guide, fields, epochs=5, lr=5e-2)
    assert losses[-1] < losses[0]
    metrics = evaluate(model, guide, fields, num_particles=50).metrics()
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"] - 3 * metrics["test_elbo_se"]
    assert isinstance(ArgumentAdapter(Pair().model), nn.Module)


def test_a_packed_sequence_field_is_cut_with_its_batch_in_fit_and_evaluate():
    """A guide reading a PackedSequence (as Pyro's DMM guide does): each batch's
    sequences are the batch's own data points (checked inside the guide)."""
    x = _data()
    steps = 4
    lengths = 1 + torch.arange(N_TRAIN) % steps
    rows = [x[i].reshape(steps, -1)[: lengths[i]] for i in range(N_TRAIN)]
    packed = nn.utils.rnn.pack_sequence(rows, enforce_sorted=False)
    pair = Pair("sized")
    rnn = nn.GRU(X_DIM // steps, 2 * Z_DIM, batch_first=True)
    seen = []

    def guide(x, seq):
        pyro.module("rnn", rnn)
        padded, lens = nn.utils.rnn.pad_packed_sequence(seq, batch_first=True)
        assert torch.equal(padded[:, 0], x.reshape(len(x), steps, -1)[:, 0])
        seen.append(len(x))
        _, h = rnn(seq)
        loc, log_scale = h[-1].chunk(2, -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    fields = {"x": x, "seq": packed}
    losses, _ = _fit(pair.model, guide, fields, fields)
    assert 20 in seen and all(torch.isfinite(torch.tensor(losses)))


# -- issue 21 #1: evaluate's transform on data under the model's argument name ----------


def test_evaluate_transforms_the_field_under_the_models_argument_name():
    """{'xs': grey} with transform='fixed' gives the same numbers as the same grey values
    under 'x' through arguments={'xs': 'x'}: the same field binarized with the same seed."""
    pair = Renamed()
    grey = torch.rand(40, X_DIM, generator=torch.Generator().manual_seed(1))
    by_name = evaluate(pair.model, pair.guide, {"xs": grey}, transform="fixed", num_particles=20)
    model, guide = (ArgumentAdapter(f, {"xs": "x"}) for f in (pair.model, pair.guide))
    mapped = evaluate(model, guide, {"x": grey}, transform="fixed", num_particles=20)
    assert by_name.metrics() == mapped.metrics()
    # and the transform did apply: grey values are no Bernoulli data, refused untransformed
    with pytest.raises(ValueError, match="support"):
        evaluate(pair.model, pair.guide, {"xs": grey}, num_particles=20)


def test_evaluate_names_the_candidates_when_the_data_field_is_ambiguous():
    pair = Renamed()
    grey = torch.rand(20, X_DIM, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"no field 'x'.*\['xs', 'other'\].*transform=None"):
        evaluate(pair.model, pair.guide, {"xs": grey, "other": grey}, transform="fixed")


# -- issue 21 #2: semi-supervised data under the argument names ---------------------------


class _M2Undecorated(_M2):
    def guide_undecorated(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(_broadcast_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _m2_functions(pair, style):
    """The M2 pair with a plain function as the model, and as the guide either a plain
    ``def guide(xs, ys=None)`` that asks for enumeration itself, or
    ``config_enumerate(obj.guide, default="parallel")`` (as Pyro's ss_vae example)."""

    def model(xs, ys=None):
        return pair.model(xs, ys)

    def guide(xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                logits = pair.encoder_y(xs)
                infer = {"enumerate": "parallel"}
                ys = pyro.sample("y", dist.OneHotCategorical(logits=logits), infer=infer)
            loc, log_scale = pair.encoder_z(_broadcast_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    if style == "config-enumerate":
        return model, config_enumerate(pair.guide_undecorated, default="parallel")
    return model, guide


def _semi_supervised_data():
    labels = torch.arange(N_TRAIN) % NUM_CLASSES
    labels[30:] = -1  # 30 of 120 labeled
    return {"xs": _data(), "ys": one_hot(labels, NUM_CLASSES)}


@pytest.mark.parametrize("style", ["plain", "config-enumerate"])
def test_semi_supervised_functions_get_their_default_on_unlabeled_batches(style):
    """Without arguments=, the same losses as the pair with arguments={'xs': 'xs', ...}
    given explicitly: unlabeled batches call the guide with ys=None, never NaN rows."""
    data = _semi_supervised_data()
    seen = []

    def recording(fn):
        def wrapped(xs, ys=None):
            seen.append(ys is None or bool(torch.isfinite(ys).all()))
            return fn(xs, ys)

        return wrapped

    pair = _M2Undecorated()
    model, guide = _m2_functions(pair, style)
    losses, result = _fit(recording(model), guide, data, objective="enum", epochs=2)
    assert all(seen) and len(seen) > 0
    assert all(torch.isfinite(torch.tensor(losses))) and result.history[-1]["step"] == 6
    reference = _M2Undecorated()
    ref_model, ref_guide = _m2_functions(reference, style)
    mapping = {"xs": "xs", "ys": "ys"}
    ref_losses, _ = _fit(ref_model, ref_guide, data, objective="enum", epochs=2, arguments=mapping)
    assert losses == pytest.approx(ref_losses, rel=1e-6)


def test_config_enumerate_of_a_bound_method_registers_its_module():
    pair = _M2Undecorated()
    guide = config_enumerate(pair.guide_undecorated, default="parallel")
    from pyro_aevb.arguments import adapt

    adapted = adapt(guide)
    assert isinstance(adapted, ArgumentAdapter) and adapted.owner is pair


def test_a_failure_on_an_unlabeled_batch_names_the_label_field():
    data = _semi_supervised_data()
    pair = _M2Undecorated()

    def model(xs, ys=None):
        return pair.model(xs, ys)

    def guide(xs, ys=None):  # forgets to sample the label where it is missing
        loc, log_scale = pair.encoder_z(_broadcast_cat(xs, ys)).chunk(2, -1)
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    with pytest.raises(Exception) as caught:
        _fit(model, guide, data, objective="enum")
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "unlabeled batch: field 'ys'" in notes and "ys=None was passed" in notes


# -- issue 21 #4: padded sequences cut to each batch's longest ----------------------------

SEQ_DIM, SEQ_Z = 3, 2


def _sequences(n=48, seed=0):
    """Binary sequences of lengths 1..9 (different in every batch), padded with zeros:
    ``x`` ``(N, T, D)``, its ``mask`` ``(N, T)``, ``lengths`` and the packed sequences."""
    g = torch.Generator().manual_seed(seed)
    lengths = 1 + torch.randperm(n, generator=g) % 9
    longest = int(lengths.max())
    x = torch.zeros(n, longest, SEQ_DIM)
    for i, length in enumerate(lengths.tolist()):
        x[i, :length] = torch.bernoulli(torch.full((length, SEQ_DIM), 0.4), generator=g)
    mask = torch.arange(longest) < lengths[:, None]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return {"x": x, "mask": mask, "lengths": lengths, "seq": packed}


class _SequencePair(nn.Module):
    """A per-step latent z_t with a GRU guide, written as Pyro's DMM example writes it:
    the model loops over ``max(lengths)`` of its batch and reads ``x[:, t]`` and
    ``mask[:, t]``, the guide runs the GRU on the packed batch, unpacks it with
    ``pad_packed_sequence`` and loops over ``x.size(1)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.decoder = nn.Linear(SEQ_Z, SEQ_DIM)
        self.rnn = nn.GRU(SEQ_DIM, 2 * SEQ_Z, batch_first=True)
        self.widths = []

    def model(self, x, mask, lengths, seq):
        pyro.module("seq", self)
        assert x.shape[1] == int(max(lengths)) == mask.shape[1]
        self.widths.append(x.shape[1])
        with pyro.plate("data", len(x)):
            for t in range(int(max(lengths))):
                z = pyro.sample(f"z_{t}", dist.Normal(x.new_zeros(len(x), SEQ_Z), 1.0).to_event(1))
                likelihood = dist.Bernoulli(logits=self.decoder(z)).to_event(1)
                pyro.sample(f"x_{t}", likelihood.mask(mask[:, t]), obs=x[:, t])

    def guide(self, x, mask, lengths, seq):
        out, _ = self.rnn(seq)
        out, out_lengths = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        assert torch.equal(out_lengths, lengths.cpu())
        with pyro.plate("data", len(x)):
            for t in range(x.size(1)):  # Pyro's DMM guide: T_max = mini_batch.size(1)
                loc, log_scale = out[:, t].chunk(2, -1)
                pyro.sample(f"z_{t}", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_padded_sequences_are_cut_to_each_batchs_longest_in_fit_and_its_evaluation():
    data = _sequences()
    pair = _SequencePair()
    losses, result = _fit(pair.model, pair.guide, data, data, batch_size=8, epochs=2)
    assert all(torch.isfinite(torch.tensor(losses))) and "test_elbo" in result.history[-1]
    # batches of 8 of lengths 1..9 have different longest sequences: some cut below 9
    assert min(pair.widths) < 9 and max(pair.widths) == 9
    # evaluate takes the pair as fit wraps it (adapt_to_data): the bound holds
    from pyro_aevb.pair_data import adapt_to_data

    model, guide = adapt_to_data(pair.model, pair.guide, data)
    metrics = evaluate(model, guide, data, num_particles=20, batch_size=8).metrics()
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"] - 3 * metrics["test_elbo_se"]


def test_a_field_with_as_many_columns_as_the_longest_sequence_is_not_cut():
    """Only a field zero beyond every point's length is padding: a (N, T) field of data
    that has T columns by chance keeps them."""
    from pyro_aevb.data.batching import sequence_padding

    data = _sequences()
    data["noise"] = torch.rand(48, data["x"].shape[1]) + 0.1
    padding = sequence_padding(data)
    assert padding == {"x": "seq", "mask": "seq"}


@pytest.mark.parametrize("case", ["semi-supervised-functions", "padded-sequences"])
def test_a_pair_wrapped_for_its_data_resumes_to_the_uninterrupted_run(case, tmp_path):
    """The wrapping fit adds (adapt_to_data) keeps checkpoints exact: 1 epoch, then a resume
    to 2, ends where 2 epochs in one go end, to the bit."""

    def make():
        if case == "padded-sequences":
            pair = _SequencePair()
            return pair.model, pair.guide, _sequences(), {}
        model, guide = _m2_functions(_M2Undecorated(), "plain")
        return model, guide, _semi_supervised_data(), {"objective": "enum"}

    model, guide, data, options = make()
    whole, _ = _fit(model, guide, data, **options)
    model, guide, data, options = make()
    _fit(model, guide, data, epochs=1, run_dir=tmp_path, **options)
    model, guide, data, options = make()
    resumed, _ = _fit(model, guide, data, run_dir=tmp_path, resume=True, **options)
    assert resumed == whole
