"""The training engine: optimizers, schedules, clipping, validation, the guards, resume."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_aevb.guides import DiagonalNormalGuide
from pyro_aevb.models import VAE, FactorAnalysis
from torch import nn

import pyro_aevb.checkpoint as ckpt
from pyro_aevb import ContractError, DivergenceError, NonFiniteLossError, data_plate, fit
from pyro_aevb.data import synthetic_factor_analysis
from pyro_aevb.schedules import AlternatingSchedule
from tests.conftest import tiny_vae
from tests.test_training import SETTINGS, _NaNAfter, _small, _state


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adamw", "lr_schedule": "cosine", "clip_norm": 5.0},
        {"optimizer": "sgd", "lr_schedule": "exponential", "lr": 1e-2},
        {"optimizer": functools.partial(torch.optim.Adam, betas=(0.8, 0.9))},
    ],
    ids=["adamw-cosine-clip", "sgd-exponential", "factory"],
)
def test_resume_is_bit_exact_with_optimizers_and_lr_schedules(digits, tmp_path, options):
    """A run interrupted after epoch 2 (in the third epoch's history row) and resumed
    reaches the uninterrupted run's parameters bit for bit, schedule state included."""
    train, test = _small(digits)
    settings = SETTINGS | options
    full = tiny_vae(dropout=0.2)
    reference = fit(*full, train, test, epochs=4, run_dir=tmp_path / "a", **settings)

    calls = []

    def crash_in_epoch_3(model, guide, fields):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        fit(
            *tiny_vae(dropout=0.2),
            train,
            test,
            epochs=4,
            run_dir=tmp_path / "b",
            history_metrics=crash_in_epoch_3,
            **settings,
        )
    assert ckpt.load(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    resumed_pair = tiny_vae(dropout=0.2, seed=123)
    resumed = fit(
        *resumed_pair, train, test, epochs=4, run_dir=tmp_path / "b", resume=True, **settings
    )
    a, b = _state(*full), _state(*resumed_pair)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]
    assert strip(reference.history) == strip(resumed.history)


def test_a_schedule_over_the_run_refuses_a_resume_with_other_epochs(digits, tmp_path):
    train, _ = _small(digits, n_train=64)
    fit(*tiny_vae(), train, epochs=1, run_dir=tmp_path, lr_schedule="cosine", **SETTINGS)
    with pytest.raises(ValueError, match="total_steps"):
        fit(
            *tiny_vae(),
            train,
            epochs=2,
            run_dir=tmp_path,
            lr_schedule="cosine",
            resume=True,
            **SETTINGS,
        )


def test_lr_schedule_sets_the_learning_rate_of_each_step(digits):
    """Cosine decay to 0 over the run: the last step's learning rate is tiny, so the
    parameters barely move in it; checked through the optimizer a factory records."""
    train, _ = _small(digits, n_train=128)
    seen = []

    def recording(params, lr):
        optimizer = torch.optim.SGD(params, lr=lr)
        seen.append(optimizer)
        return optimizer

    fit(
        *tiny_vae(),
        train,
        epochs=2,
        optimizer=recording,
        lr_schedule="cosine",
        **(SETTINGS | {"lr": 0.1}),
    )
    (optimizer,) = seen
    # 2 epochs x 2 steps: after 4 scheduler steps of T_max = 4, lr = 0.1 (1 + cos(pi)) / 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_clip_norm_bounds_every_update(digits):
    """With SGD and lr 1, an update is minus the (clipped) gradient: its norm over all
    parameters is at most clip_norm."""
    train, _ = _small(digits, n_train=64)
    model, guide = tiny_vae()
    before = {k: v.clone() for k, v in _state(model, guide).items()}
    fit(model, guide, train, epochs=1, optimizer="sgd", clip_norm=0.5, **(SETTINGS | {"lr": 1.0}))
    after = _state(model, guide)
    change = torch.cat([(after[k] - before[k]).flatten() for k in before])
    assert 0 < float(change.norm()) <= 0.5 + 1e-5


@pytest.mark.parametrize("first", ["guide", "model"])
def test_em_phases_leave_frozen_parameters_bitwise_unchanged(digits, first):
    """One epoch of two steps, both in the first period: the other role must not move
    at all, while the trained one does."""
    train, _ = _small(digits, n_train=128)
    model, guide = tiny_vae()
    start = {"model": dict(model.state_dict()), "guide": dict(guide.state_dict())}
    start = {r: {k: v.clone() for k, v in s.items()} for r, s in start.items()}
    fit(
        model,
        guide,
        train,
        schedule=AlternatingSchedule(2, 2, rounds=1, first=first),
        **(SETTINGS | {"epochs": 1}),
    )
    frozen, trained = ("model", guide) if first == "guide" else ("guide", model)
    frozen_module = model if frozen == "model" else guide
    assert all(torch.equal(start[frozen][k], v) for k, v in frozen_module.state_dict().items())
    other = "guide" if frozen == "model" else "model"
    assert any(not torch.equal(start[other][k], v) for k, v in trained.state_dict().items())


class _ValidationSpy(VAE):
    """Records whether Pyro's validation was on at each call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def forward(self, x):
        self.seen.append(pyro.infer.util.is_validation_enabled())
        return super().forward(x)


@pytest.mark.parametrize("validate", [False, True])
def test_validation_runs_on_the_check_and_the_first_step_only(digits, validate):
    train, _ = _small(digits, n_train=128)
    torch.manual_seed(0)
    model = _ValidationSpy(64, 4, (32,))
    _, guide = tiny_vae()
    fit(model, guide, train, epochs=2, validate=validate, **SETTINGS)
    # contract check (the pair, then evaluation's particles), then 4 steps
    assert model.seen == [True, True, True] + [validate] * 3
    assert pyro.infer.util.is_validation_enabled()  # restored afterwards


def test_nan_guard_stops_before_the_update_with_validation_off(digits, tmp_path):
    train, _ = _small(digits)
    torch.manual_seed(0)
    # the check's 2 calls (the pair, evaluation's particles) + 5 steps/epoch: epoch 2, step 3
    model = _NaNAfter(64, 4, (32,), nan_from=10)
    _, guide = tiny_vae()
    snapshots = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: snapshots.append(_state(model, guide)) if m.calls == 8 else None,
        with_kwargs=True,
    )
    with (
        pytest.warns(UserWarning, match="NaN"),
        pytest.raises(NonFiniteLossError, match="epoch 2, step 3"),
    ):
        fit(model, guide, train, epochs=3, run_dir=tmp_path, validate=False, **SETTINGS)
    # the parameters are those after the last good step (the one before the NaN call)
    before_nan = snapshots[-1]
    assert ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)["epoch"] == 1
    for value in _state(model, guide).values():
        assert torch.isfinite(value).all()
    assert before_nan.keys() == _state(model, guide).keys()


def test_a_diverging_loss_stops_the_run_before_the_update(tmp_path):
    """Factor analysis at lr 1e6: the loss grows by orders of magnitude while finite."""
    from pyro_aevb.guides import FullCovarianceGuide

    train, _, _ = synthetic_factor_analysis()

    def pair():
        torch.manual_seed(0)
        return FactorAnalysis(3, 2), FullCovarianceGuide(3, 2)

    with pytest.raises(DivergenceError, match="diverged at epoch"):
        fit(*pair(), train, epochs=3, lr=1e6, run_dir=tmp_path, progress=False)
    # the check can be turned off, for a user who knows better; sane runs never trip it
    fit(*pair(), train, epochs=2, lr=1e6, divergence_factor=None, progress=False)
    fit(*pair(), train, epochs=2, lr=1e-2, progress=False)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"seed": "abc"}, "seed must be an integer"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"clip_norm": -1.0}, "clip_norm must be a positive number"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ],
)
def test_bad_fit_arguments_are_named_before_any_work(digits, tmp_path, bad, match):
    train, _ = _small(digits, n_train=64)
    with pytest.raises(ValueError, match=match):
        fit(*tiny_vae(), train, run_dir=tmp_path, **(SETTINGS | {"epochs": 1} | bad))
    assert list(tmp_path.iterdir()) == []


def test_resume_without_a_checkpoint_is_an_error(digits, tmp_path):
    train, _ = _small(digits, n_train=64)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt"):
        fit(*tiny_vae(), train, epochs=1, run_dir=tmp_path, resume=True, **SETTINGS)


def test_resume_refuses_another_architecture_and_an_old_checkpoint(digits, tmp_path):
    train, _ = _small(digits, n_train=64)
    fit(*tiny_vae(), train, epochs=1, run_dir=tmp_path, **SETTINGS)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="belongs to another model/guide pair"):
        fit(*tiny_vae(hidden=(16,)), train, epochs=2, run_dir=tmp_path, resume=True, **SETTINGS)
    state = ckpt.load(tmp_path / "checkpoint.pt")
    state.pop("format")
    ckpt.atomic_save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="older pyro-aevb"):
        fit(*tiny_vae(), train, epochs=2, run_dir=tmp_path, resume=True, **SETTINGS)
    assert before != (tmp_path / "checkpoint.pt").read_bytes()  # only our edit changed it


class _BadScaleGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(64, 4)

    def forward(self, x):
        pyro.module("bad_guide", self)
        with data_plate(x):
            pyro.sample("z", dist.Normal(self.loc(x), -torch.ones(4)).to_event(1))


def test_an_invalid_scale_on_the_first_batch_names_the_guide(digits):
    train, _ = _small(digits, n_train=64)
    model, _ = tiny_vae()
    with pytest.raises(ContractError, match=r"in the guide \(_BadScaleGuide.forward"):
        fit(model, _BadScaleGuide(), train, epochs=1, **SETTINGS)


def test_step_losses_are_nats_per_data_point(digits):
    """The step's loss is the per-point negative ELBO: near the test ELBO's size."""
    train, test = _small(digits)
    model, guide = VAE(64, 4, (32,)), DiagonalNormalGuide(64, 4, (32,))
    result = fit(model, guide, train, test, epochs=3, **SETTINGS)
    row = result.history[-1]
    assert math.isfinite(row["train_elbo"])
    assert abs(row["train_elbo"] - row["test_elbo"]) < 0.2 * abs(row["test_elbo"])
