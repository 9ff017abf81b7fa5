"""Steps without per-step host reads (``fit(sync_every=...)``) and CUDA graphs.

The device-guarded step must train exactly as the eager step (same kernels, same noise),
refuse non-finite and diverging updates as the eager guard does, and contain no host read
for the objectives a CUDA graph can capture. The CUDA-graph tests at the end run only
where a GPU is present.
"""

from __future__ import annotations

import contextlib

import pyro
import pytest
import torch

from pyro_aevb import checkpoint as ckpt
from pyro_aevb import fit
from pyro_aevb.contract import check_pair
from pyro_aevb.objectives import make_objective
from pyro_aevb.plate import full_data_size
from pyro_aevb.training import DivergenceError, NonFiniteLossError, TrainingStep
from pyro_aevb.training.graphs import DeviceGuardedStep
from tests.conftest import tiny_vae
from tests.test_training import SETTINGS, _NaNAfter, _small, _state

#: objectives and their options; the importance-weighted ones with K = 3
OBJECTIVES = {
    "elbo": {},
    "meanfield": {},
    "renyi": {},
    "iwae": {},
    "dreg": {},
    "stl": {},
    "ciwae": {"beta": 0.5},
    "miwae": {"num_estimates": 3},
    "piwae": {"num_estimates": 3},
}


def _fit(train, sync_every, **kwargs):
    model, guide = tiny_vae()
    result = fit(model, guide, train, epochs=2, sync_every=sync_every, **(SETTINGS | kwargs))
    return _state(model, guide), result


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_deferred_reads_train_exactly_as_reading_every_step(digits, objective):
    """Same kernels, same noise: bitwise the same parameters; the losses the same up to
    float32 rounding (the eager ELBOs add the surrogate to a Python float, the deferred
    ones to a detached tensor)."""
    train, _ = _small(digits, n_train=200)
    particles = 1 if objective in ("elbo", "meanfield") else 3
    options = {"objective": objective, "num_particles": particles}
    if OBJECTIVES[objective]:
        options["objective_options"] = OBJECTIVES[objective]
    eager, eager_run = _fit(train, 1, **options)
    deferred, deferred_run = _fit(train, 3, **options)  # 4 steps an epoch: reads of 3 and 1
    assert eager.keys() == deferred.keys()
    for k in eager:
        assert torch.equal(eager[k], deferred[k]), k
    for a, b in zip(eager_run.history, deferred_run.history, strict=True):
        assert b["train_elbo"] == pytest.approx(a["train_elbo"], rel=1e-6)


def test_deferred_reads_with_an_em_schedule_and_clipping(digits):
    from pyro_aevb.schedules import AlternatingSchedule

    train, _ = _small(digits, n_train=200)
    options = {
        "schedule": AlternatingSchedule(guide_steps=3, model_steps=2, rounds=None),
        "clip_norm": 5.0,
    }
    eager, _ = _fit(train, 1, **options)
    deferred, _ = _fit(train, 4, **options)
    for k in eager:
        assert torch.equal(eager[k], deferred[k]), k


def test_a_non_finite_step_is_refused_on_the_device_and_named_at_the_read(digits, tmp_path):
    """NaN from epoch 2, step 3 (as in test_training): with reads every 4 steps the error
    names that step, no update was made from it on (the parameters equal the eager run's
    at its error), and the checkpoint is epoch 1's."""
    train, _ = _small(digits)
    states = {}
    for sync_every in (1, 4):
        torch.manual_seed(0)
        model = _NaNAfter(64, 4, (32,), nan_from=10)
        _, guide = tiny_vae()
        run_dir = tmp_path / str(sync_every)
        with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
            fit(model, guide, train, epochs=3, run_dir=run_dir, sync_every=sync_every, **SETTINGS)
        assert ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)["epoch"] == 1
        states[sync_every] = _state(model, guide)
    for k, value in states[1].items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, states[4][k]), k


def test_a_diverging_loss_is_refused_with_deferred_reads():
    from pyro_aevb.guides import FullCovarianceGuide
    from pyro_aevb.models import FactorAnalysis

    from pyro_aevb.data import synthetic_factor_analysis

    train, _, _ = synthetic_factor_analysis()
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match="diverged at epoch"):
        fit(
            FactorAnalysis(3, 2),
            FullCovarianceGuide(3, 2),
            train,
            epochs=3,
            lr=1e6,
            sync_every=8,
            progress=False,
        )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"cuda_graph": True}, "cuda_graph=True needs a CUDA device"),
        ({"sync_every": 4, "validate": True}, "cannot be combined"),
        ({"sync_every": 0}, "sync_every must be an integer >= 1"),
        ({"sync_every": 4, "devices": 2}, "not supported with devices"),
        ({"cuda_graph": True, "precision": "bf16-mixed"}, "not supported with devices"),
        (
            {"sync_every": 4, "optimizer": lambda groups, lr: torch.optim.Adam(groups, lr=lr)},
            "needs a fused optimizer",
        ),
    ],
)
def test_settings_a_deferred_step_cannot_honour_are_refused(digits, tmp_path, options, match):
    train, _ = _small(digits, n_train=64)
    with pytest.raises(ValueError, match=match):
        fit(*tiny_vae(), train, run_dir=tmp_path, **(SETTINGS | {"epochs": 1} | options))
    assert not (tmp_path / ckpt.CHECKPOINT_NAME).exists()


@contextlib.contextmanager
def _host_reads_raise():
    """Make every Python-level read of a tensor's value raise (what a CUDA graph capture
    forbids); kernels inside torch are not affected."""

    def refuse(*args, **kwargs):
        raise AssertionError("a host read of a tensor value")

    names = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__"]
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def _guarded_step(objective, options, particles=3):
    train, _ = _small_digits()
    model, guide = tiny_vae()
    x = torch.bernoulli(train.x[:16], generator=torch.Generator().manual_seed(0))
    elbo = make_objective(objective, particles, **options)
    store = pyro.get_param_store()
    with full_data_size(len(train)), pyro.validation_enabled(True):
        summary = check_pair(model, guide, {"x": x})
    step = TrainingStep(model, guide, elbo, summary, {"x": x}, len(train))
    return DeviceGuardedStep(step, read_every=4), x, store


def _small_digits():
    from pyro_aevb.data import load_digits

    train, test = load_digits()
    return train.flat().subset(range(100)), test


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_the_guarded_step_reads_nothing_back_to_the_host(objective):
    """The whole device-guarded step (the objective's loss, backward, the guard, the fused
    update) runs with every tensor read refused: what a CUDA graph needs."""
    guarded, x, store = _guarded_step(objective, OBJECTIVES[objective])
    before = [p.detach().clone() for p in guarded.step.parameters]
    with pyro.validation_enabled(False), _host_reads_raise():
        guarded.body({"x": x}, "joint")
        guarded.body({"x": x}, "joint")
    guarded.queued = 2
    losses = guarded.read()
    assert len(losses) == 2 and all(v == v for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, guarded.step.parameters, strict=True))


# -- CUDA graphs (only where a GPU is present) --------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_replayed_steps_match_eager_steps_given_the_same_noise(digits, objective):
    """Same seed, same batches: a graph-replayed run and an eager run of the
    device-guarded step reach the same parameters (CUDA kernels: to 1e-5)."""
    train, _ = _small(digits, n_train=256)
    particles = 1 if objective == "elbo" else 3
    states = []
    for cuda_graph in (False, True):
        model, guide = tiny_vae()
        fit(
            model,
            guide,
            train,
            epochs=3,
            device="cuda",
            objective=objective,
            num_particles=particles,
            sync_every=8,
            cuda_graph=cuda_graph,
            **SETTINGS,
        )
        states.append(_state(model, guide))
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-5)


@cuda
def test_two_replays_draw_different_noise_and_training_converges(digits):
    train, test = _small(digits, n_train=512)
    model, guide = tiny_vae()
    result = fit(model, guide, train, test, epochs=8, device="cuda", cuda_graph=True, **SETTINGS)
    elbos = [row["test_elbo"] for row in result.history]
    assert elbos[-1] > elbos[0] + 5
    # the same batch twice through the captured step: different reparameterized noise
    from pyro_aevb.training.graphs import CUDAGraphStep

    model, guide = tiny_vae()
    model, guide = model.cuda(), guide.cuda()
    x = torch.bernoulli(train.x[:64]).cuda()
    elbo = make_objective("elbo", 1)
    with full_data_size(len(train)), pyro.validation_enabled(True):
        summary = check_pair(model, guide, {"x": x})
    step = TrainingStep(model, guide, elbo, summary, {"x": x}, len(train), lr=0.0)
    graphed = CUDAGraphStep(DeviceGuardedStep(step, read_every=16))
    with pyro.validation_enabled(False):
        for _ in range(6):  # 3 warm-up steps, the capture, replays
            graphed({"x": x})
    losses = graphed.read()
    assert graphed.graphs, "the step was not captured"
    assert len(set(losses[-3:])) == 3  # lr 0: only the noise changes the loss
