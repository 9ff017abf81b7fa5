"""Every registered objective: the library's step equals Pyro's SVI step, and trains;
objectives as specs (options, capabilities, generated flags); ``fit`` with an ELBO.

Parametrized over :func:`available_objectives`, so a newly registered objective is
covered without editing this file (its required options come from its spec's examples):
:mod:`tests.extra_objective` registers one from a test-local module.
"""

import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_aevb import (
    TrainingStep,
    available_objectives,
    check_pair,
    full_data_size,
    make_objective,
    register_objective,
)
from pyro_aevb.cli import build_parser
from pyro_aevb.objectives import (
    Capabilities,
    ObjectiveSpec,
    Option,
    capabilities_of,
    get_objective,
    registry,
    resolve_objective,
)
from pyro_aevb.objectives.flags import add_objective_arguments, objective_overrides
from pyro_aevb.training import bind_pair
from tests import extra_objective  # registers 'elbo_loop' before the parametrization
from tests.conftest import tiny_vae

N = 200


def _example(name: str) -> dict:
    """Valid values of the options the objective cannot do without, from its spec."""
    return get_objective(name).example_options()


def _batch(digits, n=64):
    train, _ = digits
    return {"x": torch.bernoulli(train.x[:n], generator=torch.Generator().manual_seed(0))}


def _ours(name, particles, batch, optimizer, lr, steps):
    model, guide = tiny_vae()
    objective = make_objective(name, particles, **_example(name))
    with pyro.get_param_store().scope():
        with full_data_size(N):
            summary = check_pair(
                model, guide, batch, allow_model_enumeration=capabilities_of(name).enumerates
            )
        step = TrainingStep(model, guide, objective, summary, batch, N, optimizer=optimizer, lr=lr)
        losses = []
        for t in range(steps):
            pyro.set_rng_seed(t)
            losses.append(step(batch))
    return losses, model, guide, objective.max_plate_nesting


def _pyro_svi(name, particles, batch, optim, steps, max_plate_nesting):
    model, guide = tiny_vae()
    objective = make_objective(name, particles, **_example(name))
    objective.max_plate_nesting = max_plate_nesting  # as ours, so neither guesses (and draws)
    pair = bind_pair(model, guide, batch, N)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(pair.model, pair.guide, optim, objective)
        losses = []
        for t in range(steps):
            pyro.set_rng_seed(t)
            with full_data_size(N):
                losses.append(svi.step(**batch))
    return losses, model, guide


def _assert_close_states(a, b, tol):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, rtol=tol, atol=tol), name


@pytest.mark.parametrize("name", available_objectives())
def test_step_equals_pyro_svi_step_for_the_same_noise(digits, name):
    """SGD makes the update proportional to the gradient, so equal parameters after
    three steps mean equal gradients (to float round-off) at every step."""
    batch = _batch(digits)
    particles = 3
    ours, m1, g1, nesting = _ours(name, particles, batch, "sgd", 1e-2, 3)
    theirs, m2, g2 = _pyro_svi(name, particles, batch, pyro.optim.SGD({"lr": 1e-2}), 3, nesting)
    # Pyro's SVI reports the full-data loss scaled by 1/N, as ours: nats per data point
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    _assert_close_states(m1, m2, 1e-6)
    _assert_close_states(g1, g2, 1e-6)


def test_fused_adam_step_equals_pyro_adam(digits):
    batch = _batch(digits)
    ours, m1, g1, nesting = _ours("elbo", 1, batch, "adam", 1e-2, 5)
    theirs, m2, g2 = _pyro_svi("elbo", 1, batch, pyro.optim.Adam({"lr": 1e-2}), 5, nesting)
    assert ours == pytest.approx(theirs, rel=1e-5)
    _assert_close_states(m1, m2, 1e-5)
    _assert_close_states(g1, g2, 1e-5)


@pytest.mark.parametrize("name", available_objectives())
def test_objective_trains_a_small_vae(digits, name):
    batch = _batch(digits, 200)
    losses, *_ = _ours(name, 3, batch, "adam", 1e-2, 50)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 2.0  # nats per data point


def test_bad_objective_settings():
    with pytest.raises(ValueError, match="alpha = 1 is the ELBO"):
        make_objective("renyi", 5, alpha=1.0)
    with pytest.raises(ValueError, match="num_particles must be at least 1"):
        make_objective("elbo", 0)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("elbo")(lambda num_particles=1: None)


def test_a_new_objective_is_one_file():
    """tests/extra_objective.py, imported above and edited nowhere else, is registered,
    offered by the command line and covered by this file's parametrized tests."""
    name = extra_objective.SPEC.name
    assert name in available_objectives()
    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    vae_parser = fit_parser._subparsers._group_actions[0].choices["vae"]  # one per pair
    objective_flag = next(a for a in vae_parser._actions if a.dest == "objective")
    assert name in objective_flag.choices
    for test in (
        test_step_equals_pyro_svi_step_for_the_same_noise,
        test_objective_trains_a_small_vae,
    ):
        (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
        assert name in mark.args[1]
    assert capabilities_of(extra_objective.LoopedTraceELBO()).kl_weight


def test_option_flags_are_generated_from_the_specs(monkeypatch):
    """Each option's flag, type and help come from its spec; objectives sharing an option
    share its flag; a new objective's option appears without editing the command line."""
    spec = ObjectiveSpec(
        "tempered",
        lambda num_particles=1, temperature=None: pyro.infer.Trace_ELBO(num_particles),
        "a test objective",
        options=(Option("temperature", float, "the test's temperature", required=True),),
    )
    monkeypatch.setitem(registry._OBJECTIVES, "tempered", spec)
    import argparse

    parser = argparse.ArgumentParser()
    add_objective_arguments(parser)
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings[1:2] == []}
    assert "the test's temperature (--objective tempered)" in helps["--temperature"]
    assert "(--objective miwae or piwae)" in helps["--estimates"]
    args = parser.parse_args(
        ["--objective", "miwae", "--particles", "2", "--estimates", "3", "--temperature", "2"]
    )
    overrides = objective_overrides(vars(args))
    assert overrides["objective"] == "miwae" and overrides["num_particles"] == 2
    assert overrides["objective_options"] == {"num_estimates": 3, "temperature": 2.0}
    with pytest.raises(ValueError, match="needs the option temperature .the test's temperature"):
        make_objective("tempered", 1)


def test_capabilities_replace_name_tests():
    assert [n for n in available_objectives() if capabilities_of(n).kl_weight] == [
        "elbo",
        "elbo_loop",
        "meanfield",
    ]
    assert [n for n in available_objectives() if capabilities_of(n).enumerates] == ["enum"]
    assert {n for n in available_objectives() if capabilities_of(n).path_derivative} == {
        "dreg",
        "stl",
    }
    assert capabilities_of("renyi").min_particles == 2
    # instances: those a spec builds have its capabilities; others are inferred
    assert capabilities_of(make_objective("meanfield")).kl_weight
    assert capabilities_of(pyro.infer.TraceEnum_ELBO()).enumerates
    assert capabilities_of(pyro.infer.TraceGraph_ELBO()) == Capabilities()
    with pytest.raises(TypeError, match="name of a registered objective .* or a pyro.infer.ELBO"):
        capabilities_of(lambda model, guide: 0.0)


def test_fit_takes_an_elbo_instance_as_svi_does(digits, tmp_path):
    """fit(objective=ELBO) trains with that instance as it is; the run records its class;
    its capabilities decide what applies (a KL weight needs a separable ELBO)."""
    from pyro_aevb import checkpoint as ckpt
    from pyro_aevb import fit
    from pyro_aevb.annealing import KLAnnealing

    train, _ = digits
    model, guide = tiny_vae()
    elbo = pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True)
    result = fit(
        model,
        guide,
        train,
        objective=elbo,
        epochs=2,
        batch_size=50,
        lr=1e-2,
        transform="dynamic",
        run_dir=tmp_path,
    )
    losses = [row["train_elbo"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] > losses[0]
    config = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)["config"]
    assert config["objective"] == "Trace_ELBO" and config["num_particles"] == 2
    with pytest.raises(ValueError, match="KL weight applies to the objectives"):
        fit(
            model,
            guide,
            train,
            objective=pyro.infer.TraceGraph_ELBO(),
            kl_annealing=KLAnnealing(0.5),
            epochs=1,
        )
    with pytest.raises(ValueError, match="objective_options .* apply to a registered"):
        resolve_objective(elbo, 1, {"alpha": 0.5})
    with pytest.raises(ValueError, match="num_particles=3 was given with a Trace_ELBO"):
        resolve_objective(elbo, 3)
