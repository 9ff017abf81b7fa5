"""Alternating (EM) schedules: the phase sequence, frozen parameters, exact resume."""

import pytest
import torch

from pyro_aevb import fit
from pyro_aevb.schedules import AlternatingSchedule, JointSchedule
from tests.conftest import tiny_vae

SETTINGS = dict(transform="dynamic", batch_size=60, lr=3e-3, seed=3, progress=False)


def test_phases_alternate_and_end_after_the_rounds():
    schedule = AlternatingSchedule(guide_steps=3, model_steps=2, rounds=2)
    phases = [schedule.phase(step) for step in range(12)]
    assert phases == ["guide"] * 3 + ["model"] * 2 + ["guide"] * 3 + ["model"] * 2 + [None] * 2
    assert schedule.total_steps == 10
    first_m = AlternatingSchedule(1, 2, first="model")
    assert [first_m.phase(s) for s in range(6)] == ["model", "model", "guide"] * 2
    assert first_m.total_steps is None and JointSchedule().phase(10**6) == "joint"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guide_steps=0, model_steps=5), "at least 1"),
        (dict(guide_steps=5, model_steps=5, rounds=0), "rounds must be at least 1"),
        (dict(guide_steps=5, model_steps=5, first="e"), "first must be"),
    ],
)
def test_bad_schedules_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlternatingSchedule(**kwargs)


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_each_phase_updates_only_its_side(digits):
    train, test = digits
    train = train.subset(range(300))  # 5 steps per epoch
    model, guide = tiny_vae()
    m0, g0 = _params(model), _params(guide)
    schedule = AlternatingSchedule(guide_steps=5, model_steps=5, rounds=1)
    result = fit(model, guide, train, epochs=1, schedule=schedule, **SETTINGS)  # guide epoch
    assert result.history[-1]["phase"] == "guide" and result.epochs_completed == 1
    assert all(torch.equal(v, m0[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, g0[k]) for k, v in guide.state_dict().items())

    model, guide = tiny_vae()
    schedule = AlternatingSchedule(guide_steps=5, model_steps=5, rounds=1, first="model")
    fit(model, guide, train, epochs=1, schedule=schedule, **SETTINGS)  # model epoch
    assert all(torch.equal(v, g0[k]) for k, v in guide.state_dict().items())
    assert not all(torch.equal(v, m0[k]) for k, v in model.state_dict().items())


def test_training_stops_when_the_rounds_end_mid_epoch(digits):
    train, test = digits
    train, test = train.subset(range(300)), test.subset(range(60))
    schedule = AlternatingSchedule(guide_steps=4, model_steps=3, rounds=2)  # 14 steps
    result = fit(*tiny_vae(), train, test, epochs=None, schedule=schedule, eval_every=3, **SETTINGS)
    steps = [row["step"] for row in result.history]
    assert steps == [3, 6, 9, 12, 14]  # a row every 3 steps, and one for the last 2
    assert [row["phase"] for row in result.history] == ["guide", "model", "guide", "model", "model"]
    assert result.epochs_completed == 3  # 5 steps per epoch: the third ends early


def test_resume_with_a_schedule_reaches_the_same_parameters(digits, tmp_path):
    """The schedule position and the steps since the last history row survive a resume."""
    train, test = digits
    train, test = train.subset(range(300)), test.subset(range(60))
    schedule = AlternatingSchedule(guide_steps=7, model_steps=6, rounds=2)
    kwargs = dict(schedule=schedule, eval_every=4, **SETTINGS)
    full = tiny_vae()
    reference = fit(*full, train, test, epochs=None, run_dir=tmp_path / "a", **kwargs)
    first = tiny_vae()
    fit(*first, train, test, epochs=3, run_dir=tmp_path / "b", **kwargs)
    resumed_pair = tiny_vae(seed=9)
    resumed = fit(
        *resumed_pair, train, test, epochs=None, run_dir=tmp_path / "b", resume=True, **kwargs
    )
    for a, b in zip(full, resumed_pair, strict=True):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]
    assert strip(reference.history) == strip(resumed.history)

    with pytest.raises(ValueError, match="schedule"):
        other = dict(kwargs, schedule=AlternatingSchedule(5, 5, rounds=2))
        fit(*tiny_vae(), train, test, epochs=None, run_dir=tmp_path / "b", resume=True, **other)


def test_epochs_none_needs_a_finite_schedule(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="epochs=None needs a schedule"):
        fit(*tiny_vae(), train, epochs=None, **SETTINGS)
    with pytest.raises(ValueError, match="eval_every"):
        fit(*tiny_vae(), train, epochs=1, eval_every=0, **SETTINGS)
