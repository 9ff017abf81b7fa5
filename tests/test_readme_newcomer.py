"""Issue 21 #5 and #13, what a newcomer reads first. The README says how Pyro's
``ClippedAdam`` differs from ``clip_norm`` (checked here against both implementations), and
it shows the quick start's expected output, which is what the command prints (the
summary's lines, in its format) with numbers that obey the bounds.

The numbers themselves come from one run of ``pyro-aevb fit vae`` (written down in the
README with the machine's load); here they are checked against mathematics, not rerun:
the importance-sampled log-likelihood (K samples) is a bound at least as tight as the
ELBO, the effective sample size lies in [1, K], and the run did its 100 epochs.
"""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    text = README.read_text()
    match = re.search(r"<!-- readme-output: quickstart -->\n```text\n(.*?)```", text, re.S)
    assert match, "README.md shows no quick start output (a text block marked readme-output)"
    return match.group(1)


def _number(label: str, block: str) -> tuple[float, ...]:
    match = re.search(rf"^{re.escape(label)}\s+(-?[\d.]+)(?: \+- ([\d.]+))?", block, re.M)
    assert match, f"no line '{label}' in the README's quick start output"
    return tuple(float(g) for g in match.groups() if g is not None)


def test_the_readme_shows_the_quick_starts_summary_in_the_commands_format():
    from pyro_aevb.cli.messages import _summary

    block = _block()
    elbo, elbo_se = _number("test ELBO", block)
    ll, ll_se = _number("test log-likelihood", block)
    (ess,) = _number("ESS mean", block)
    k = int(re.search(r"\(K = (\d+) importance samples\)", block).group(1))
    epochs = int(re.search(r"s \((\d+) epochs\)", block).group(1))
    (seconds,) = _number("training", block)
    (khat,) = _number("Pareto k-hat mean", block)
    fraction = float(re.search(r"\((\d+)% above 0.7\)", block).group(1)) / 100
    metrics = {
        "test_elbo": elbo, "test_elbo_se": elbo_se, "test_log_likelihood": ll,
        "test_log_likelihood_se": ll_se, "log_likelihood_particles": k, "ess_mean": ess,
        "pareto_k_mean": khat, "pareto_k_fraction_above_0.7": fraction,
        "train_seconds": seconds, "epochs_completed": epochs, "num_test_points": 1000,
    }
    # every line the command prints for these numbers is in the README as printed
    for line in _summary(metrics, "vae").splitlines():
        if not line.startswith(("WARNING", "  ")):
            assert line in block, line
    assert epochs == 100 and k == 1000
    assert ll >= elbo - 3 * (elbo_se**2 + ll_se**2) ** 0.5
    assert 1 <= ess <= k
    # the per-epoch lines printed to a redirected stderr are shown too
    assert re.search(r"epoch 100/100  train ELBO -[\d.]+  test ELBO -[\d.]+", block)


def test_the_readme_says_clippedadam_clamps_elements_and_decays_the_lr_which_holds():
    """Pyro's ClippedAdam clamps each gradient element (in place) and multiplies the
    learning rate by lrd every step; the library's clip_norm (TrainingStep) rescales the
    whole gradient to the norm: on the gradient (10, 0.1) with bound 1 they give (1, 0.1)
    and (10, 0.1) / |(10, 0.1)|."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.optim.clipped_adam import ClippedAdam

    from pyro_aevb import TrainingStep, check_pair
    from pyro_aevb.objectives import make_objective

    text = " ".join(README.read_text().split())
    assert "it clamps *each gradient element* to `[-clip_norm, clip_norm]`" in text
    assert "multiplies the learning rate by `lrd` every step" in text
    assert "acts about `B` times later" in text and "divide both by the batch size" in text

    g = torch.tensor([10.0, 0.1])
    p = torch.zeros(2, requires_grad=True)
    p.grad = g.clone()
    optimizer = ClippedAdam([p], lr=0.1, clip_norm=1.0, lrd=0.5)
    optimizer.step()
    assert torch.equal(p.grad, torch.tensor([1.0, 0.1]))
    assert optimizer.param_groups[0]["lr"] == 0.05

    # the library's clip_norm: the loss sum(w * g) has gradient g in w
    def model(x):
        w = pyro.param("w", torch.zeros(2))
        with pyro.plate("data", len(x)):
            pyro.factor("f", (w * g).sum() * x.new_ones(len(x)))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pass

    batch = {"x": torch.zeros(1)}
    summary = check_pair(model, guide, batch)
    step = TrainingStep(
        model, guide, make_objective("elbo", 1), summary, batch, 1, lr=0.1, clip_norm=1.0,
        optimizer="sgd",
    )
    before = pyro.param("w").detach().clone()
    step(batch, "joint", "at step 1")
    # SGD: the update is -lr * clipped gradient; d(-ELBO)/dw = -g, rescaled to norm 1
    expected = 0.1 * g / g.norm()
    moved = pyro.param("w").detach() - before
    assert torch.allclose(moved, expected, atol=1e-7)
    assert not torch.allclose(moved, 0.1 * g.clamp(-1.0, 1.0), atol=1e-4)  # not ClippedAdam's
