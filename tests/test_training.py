"""Fitting: exact resume, atomic checkpoints, the non-finite loss guard, early stopping."""

import math
import os

import pyro
import pytest
import torch
from pyro_aevb.models import VAE

import pyro_aevb.checkpoint as ckpt
from pyro_aevb import NonFiniteLossError, elbo_per_datapoint, fit
from pyro_aevb.evaluation import eval_mode, prepare_fields
from tests.conftest import tiny_vae

SETTINGS = dict(transform="dynamic", batch_size=64, lr=3e-3, seed=7, progress=False)


def _small(digits, n_train=300, n_test=100):
    train, test = digits
    return train.subset(range(n_train)), test.subset(range(n_test))


def _state(model, guide):
    return {f"m.{k}": v for k, v in model.state_dict().items()} | {
        f"g.{k}": v for k, v in guide.state_dict().items()
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_improves_the_test_elbo(digits):
    train, test = _small(digits)
    model, guide = tiny_vae()
    result = fit(model, guide, train, test, epochs=8, **SETTINGS)
    elbos = [row["test_elbo"] for row in result.history]
    assert len(elbos) == 8 and all(math.isfinite(e) for e in elbos)
    assert elbos[-1] > elbos[0] + 5  # nats per data point


def test_resume_reaches_the_same_parameters(digits, tmp_path):
    """Dropout and dynamic binarization consume RNG: resume must restore all of it."""
    train, test = _small(digits)
    full = tiny_vae(dropout=0.2)
    reference = fit(*full, train, test, epochs=4, run_dir=tmp_path / "a", **SETTINGS)

    first = tiny_vae(dropout=0.2)
    fit(*first, train, test, epochs=2, run_dir=tmp_path / "b", **SETTINGS)
    resumed_pair = tiny_vae(dropout=0.2, seed=123)  # different init: all state must come from disk
    resumed = fit(
        *resumed_pair, train, test, epochs=4, run_dir=tmp_path / "b", resume=True, **SETTINGS
    )
    _assert_same(_state(*full), _state(*resumed_pair))
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]
    assert strip(reference.history) == strip(resumed.history)


class _Interrupt(Exception):
    pass


class _InterruptingVAE(VAE):
    """Raises after a number of calls, as a crash or Ctrl-C in the middle of an epoch."""

    def __init__(self, *args, fail_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise _Interrupt
        return super().forward(x)


def test_resume_after_an_interruption_mid_epoch(digits, tmp_path):
    train, test = _small(digits)
    full = tiny_vae()
    fit(*full, train, test, epochs=3, **SETTINGS)

    torch.manual_seed(0)
    model = _InterruptingVAE(64, 4, (32,), fail_at=14)  # 5 steps/epoch: dies in epoch 2-3
    _, guide = tiny_vae()
    model.load_state_dict(tiny_vae()[0].state_dict())
    with pytest.raises(_Interrupt):
        fit(model, guide, train, test, epochs=3, run_dir=tmp_path, **SETTINGS)
    assert ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)["epoch"] >= 1
    resumed = tiny_vae(seed=5)
    fit(*resumed, train, test, epochs=3, run_dir=tmp_path, resume=True, **SETTINGS)
    _assert_same(_state(*full), _state(*resumed))


def test_checkpoint_survives_an_interrupted_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.atomic_save({"epoch": 1, "w": torch.arange(5.0)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"epoch": 2, "w": torch.zeros(5)}, path)
    state = ckpt.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(5.0))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


class _NaNAfter(VAE):
    """Decoder logits become NaN from a given call on."""

    def __init__(self, *args, nan_from, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.nan_from = 0, nan_from
        self.decoder.register_forward_hook(
            lambda module, inputs, out: out * float("nan") if self.calls >= nan_from else out
        )

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize("validate", [True, False])
def test_non_finite_loss_stops_and_keeps_the_last_good_state(digits, tmp_path, validate):
    """With Pyro's validation the NaN is caught in the distribution, without it in the loss."""
    train, _ = _small(digits)
    torch.manual_seed(0)
    # The contract check makes two calls (the pair, then particles as evaluation draws
    # them), then 5 steps per epoch: call 10 is epoch 2, step 3.
    model = _NaNAfter(64, 4, (32,), nan_from=10)
    _, guide = tiny_vae()
    with (
        pyro.validation_enabled(validate),
        pytest.raises(NonFiniteLossError, match="epoch 2, step 3"),
    ):
        fit(model, guide, train, epochs=3, run_dir=tmp_path, **SETTINGS)
    state = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)
    assert state["epoch"] == 1
    for value in list(state["params"].values()) + list(_state(model, guide).values()):
        assert torch.isfinite(value).all()


def test_early_stopping_restores_the_best_parameters(digits):
    train, test = _small(digits, n_train=60)
    model, guide = tiny_vae(hidden=(128,))
    result = fit(
        model,
        guide,
        train,
        test,
        epochs=200,
        patience=3,
        **(SETTINGS | {"lr": 2e-2, "batch_size": 20}),
    )
    assert result.stopped_early and result.epochs_completed < 200
    elbos = [row["test_elbo"] for row in result.history]
    assert result.best_epoch == 1 + elbos.index(max(elbos))
    assert result.epochs_completed - result.best_epoch == 3
    fields = prepare_fields(test, "dynamic")
    with eval_mode(model, guide):
        now = elbo_per_datapoint(model, guide, fields, seed=SETTINGS["seed"]).mean()
    assert float(now) == pytest.approx(max(elbos), abs=1e-4)


def test_existing_run_is_not_overwritten(digits, tmp_path):
    train, _ = _small(digits)
    fit(*tiny_vae(), train, epochs=1, run_dir=tmp_path, **SETTINGS)
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(*tiny_vae(), train, epochs=1, run_dir=tmp_path, **SETTINGS)
    # a resume may lower the learning rate (tests/test_resume_changes.py), not change the seed
    with pytest.raises(ValueError, match="seed"):
        fit(*tiny_vae(), train, epochs=2, run_dir=tmp_path, resume=True, **(SETTINGS | {"seed": 9}))


def test_fit_accepts_a_mapping_of_fields_and_plain_functions(digits):
    """Any callables following the contract, here closures over nn.Modules."""
    train, _ = _small(digits)
    model, guide = tiny_vae()
    x = torch.bernoulli(train.x, generator=torch.Generator().manual_seed(0))
    result = fit(
        lambda x: model(x),
        lambda x: guide(x),
        {"x": x},
        epochs=3,
        **(SETTINGS | {"transform": None}),
    )
    assert result.history[-1]["train_elbo"] > result.history[0]["train_elbo"]


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "renyi"])
def test_fit_with_vectorized_particles_of_pyro_objectives(digits, objective):
    """fit hands Pyro's ELBOs the plate count of the contract check, one more for the
    vectorized particles' plate (which Pyro puts at dim -max_plate_nesting)."""
    train, test = digits
    model, guide = tiny_vae()
    result = fit(
        model,
        guide,
        train.subset(range(100)),
        test.subset(range(50)),
        transform="dynamic",
        objective=objective,
        num_particles=3,
        epochs=2,
        batch_size=50,
        progress=False,
    )
    assert all(math.isfinite(row["train_elbo"]) for row in result.history)
