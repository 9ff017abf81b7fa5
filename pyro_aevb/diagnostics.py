r"""Gradient diagnostics: the signal-to-noise ratio of an objective's gradient estimates.

For a parameter element :math:`\psi` and a gradient estimator :math:`\Delta(\psi)`
on a fixed minibatch, Rainforth et al. (2018) define

.. math::

    \mathrm{SNR}(\psi) = \frac{|\mathbb E[\Delta(\psi)]|}{\sqrt{\mathbb V[\Delta(\psi)]}},

and show that, for the IWAE bound with :math:`K` particles, it grows like
:math:`O(\sqrt K)` for the model's parameters but falls like :math:`O(1/\sqrt K)`
for the guide's. :func:`gradient_snr` estimates it from repeated draws of any
objective's gradient; :func:`score_function` makes a guide use the
score-function (REINFORCE) estimator instead of the reparameterization trick, to
compare the two (Ranganath et al., 2014; Kingma & Welling, 2014).

References: Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter
variational bounds are not necessarily better.

The PSIS :math:`\hat k` of importance weights (:func:`pareto_k_hat`) and the advice when
it flags an evaluation (:func:`khat_advice`) live in :mod:`pyro_aevb.psis`, importable from
here too; that module imports nothing of the library, so that the estimators of
:mod:`pyro_aevb.evaluation` can use it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

from .contract import call_arguments
from .psis import khat_advice, pareto_k_hat, particles_for_ess  # noqa: F401 (PSIS lives there)


@dataclass
class SNRSummary:
    """Mean and median over parameter elements of :math:`|\\text{mean}| / \\text{std}`."""

    mean: float
    median: float
    #: parameter elements summarized (those whose gradient ever varied)
    num_elements: int


@dataclass
class GradientSNR:
    """What :func:`gradient_snr` returns."""

    model: SNRSummary
    guide: SNRSummary
    #: by top-level module (the name given to ``pyro.module``, or ``model.<child>``)
    modules: dict[str, SNRSummary]
    num_repeats: int
    #: elementwise SNR of every parameter, by name (NaN where the gradient is constant)
    parameters: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def _summarize(values: list[torch.Tensor]) -> SNRSummary:
    flat = torch.cat([v.flatten() for v in values]) if values else torch.zeros(0)
    flat = flat[~flat.isnan()]
    if flat.numel() == 0:
        return SNRSummary(math.nan, math.nan, 0)
    return SNRSummary(float(flat.mean()), float(flat.median()), flat.numel())


def _parameters(fn: Callable, kwargs: dict, role: str) -> dict[str, torch.Tensor]:
    """The parameters ``fn`` uses: its Pyro param sites and, for an ``nn.Module`` (or a
    wrapper of a module's ``forward``, as :func:`score_function` returns), its own
    parameters not registered with Pyro. The module's own count because the param store
    can hold other tensors under the same names (another module registered earlier with
    the same ``pyro.module`` name), which ``fn`` then does not use."""
    with poutine.block():
        trace = poutine.trace(fn, param_only=True).get_trace(**kwargs)
    params = {
        name: site["value"].unconstrained()
        for name, site in trace.nodes.items()
        if site["type"] == "param"
    }
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__wrapped__", None)
    module = getattr(module, "__self__", module)  # a bound forward's module
    if isinstance(module, torch.nn.Module):
        known = {id(p) for p in params.values()}
        for name, p in module.named_parameters():
            if id(p) not in known:
                params[f"{role}.{name}"] = p
    return {n: p for n, p in params.items() if p.requires_grad}


def _module_of(name: str) -> str:
    if "$$$" in name:  # pyro.module("decoder", m): "decoder$$$0.weight"
        return name.split("$$$")[0]
    return ".".join(name.split(".")[:2])  # "guide.loc.weight" -> "guide.loc"


def gradient_snr(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    objective: ELBO,
    num_repeats: int = 100,
    seed: int | None = 0,
) -> GradientSNR:
    r"""Signal-to-noise ratio of ``objective``'s gradient on a fixed ``batch``.

    Draws ``num_repeats`` independent gradient estimates of
    ``objective.differentiable_loss`` and reports, per parameter element,
    :math:`|\bar g| / s_g` (sample mean and standard deviation over repeats),
    summarized by mean and median for the model's parameters, the guide's, and
    each top-level module. A parameter the model uses counts as a model
    parameter even if the guide uses it too. Elements whose gradient never
    varies (e.g. always zero) are left out of the summaries. Modules stay in
    the mode they are in (dropout, if active, is part of the noise).

    :param batch: the fields, as for :func:`pyro_aevb.check_pair`; each of
        ``model`` and ``guide`` receives those it takes.
    :param objective: any ELBO with ``differentiable_loss`` (Pyro's or ours), or with
        only ``loss_and_grads`` (``TraceGraph_ELBO``, whose baselines then adapt over the
        repeats as they would over training steps).
    :param seed: seeds a private random stream; the caller's is restored after.
    """
    if int(num_repeats) < 2:
        raise ValueError(
            f"num_repeats must be at least 2 to estimate a variance, got {num_repeats}"
        )
    model_kwargs = call_arguments(model, batch, "model")
    guide_kwargs = call_arguments(guide, batch, "guide")

    def model_fn(**kw):
        return model(**{k: kw[k] for k in model_kwargs})

    def guide_fn(**kw):
        return guide(**{k: kw[k] for k in guide_kwargs})

    # Everything that draws random numbers runs on a forked stream, so the caller's
    # stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        model_params = _parameters(model, model_kwargs, "model")
        guide_params = {
            n: p
            for n, p in _parameters(guide, guide_kwargs, "guide").items()
            if n not in model_params
        }
        params = {**model_params, **guide_params}
        if not params:
            raise ValueError("the model and guide have no trainable parameters")
        names, tensors = list(params), list(params.values())
        # Welford's running mean and sum of squared deviations, in float64.
        mean = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
        m2 = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
        if seed is not None:
            torch.manual_seed(seed)
        for r in range(1, int(num_repeats) + 1):
            grads = _gradient(objective, model_fn, guide_fn, batch, tensors)
            for i, g in enumerate(grads):
                g = torch.zeros_like(mean[i]) if g is None else g.detach().double()
                delta = g - mean[i]
                mean[i] += delta / r
                m2[i] += delta * (g - mean[i])
    snr = {}
    for name, mu, ss in zip(names, mean, m2, strict=True):
        std = (ss / (int(num_repeats) - 1)).sqrt()
        snr[name] = torch.where(std > 0, mu.abs() / std, torch.full_like(std, math.nan)).cpu()
    modules: dict[str, list[torch.Tensor]] = {}
    for name, value in snr.items():
        modules.setdefault(_module_of(name), []).append(value)
    return GradientSNR(
        model=_summarize([snr[n] for n in model_params]),
        guide=_summarize([snr[n] for n in guide_params]),
        modules={m: _summarize(v) for m, v in modules.items()},
        num_repeats=int(num_repeats),
        parameters=snr,
    )


def _gradient(objective, model_fn, guide_fn, batch, tensors) -> list[torch.Tensor | None]:
    """One gradient estimate of ``objective`` with respect to ``tensors``."""
    if hasattr(objective, "differentiable_loss"):
        loss = objective.differentiable_loss(model_fn, guide_fn, **dict(batch))
        return list(torch.autograd.grad(loss, tensors, allow_unused=True))
    for t in tensors:
        t.grad = None
    objective.loss_and_grads(model_fn, guide_fn, **dict(batch))
    grads = [None if t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return grads


class ScoreFunctionDistribution(TorchDistribution):
    """Wraps a distribution so that Pyro treats it as not reparameterizable:
    samples carry no gradient and :class:`~pyro.infer.Trace_ELBO` adds the
    score-function term :math:`\\log q \\cdot \\nabla \\log q` for its site."""

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base_dist):
        self.base_dist = base_dist
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    def expand(self, batch_shape, _instance=None):
        # Plates broadcast a site's distribution by expanding it; keep the wrapper.
        return ScoreFunctionDistribution(self.base_dist.expand(batch_shape))

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.base_dist.sample(sample_shape)

    def log_prob(self, value):
        return self.base_dist.log_prob(value)


class ScoreFunctionMessenger(Messenger):
    """Wraps every unobserved, reparameterizable sample site's distribution in a
    :class:`ScoreFunctionDistribution`, and sets the site's baseline options if given."""

    def __init__(self, baseline: dict | None = None):
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["fn"].has_rsample:
            msg["fn"] = ScoreFunctionDistribution(msg["fn"])
            if self.baseline is not None:
                msg["infer"] = dict(msg["infer"], baseline=dict(self.baseline))


def score_function(guide: Callable, baseline: dict | None = None) -> Callable:
    """The guide with its continuous sites switched to the score-function estimator.

    Pyro's :class:`~pyro.infer.Trace_ELBO` then estimates the guide gradient as
    :math:`\\mathbb E_q[\\nabla_\\phi \\log q_\\phi(z) (\\log p(x, z) - \\log q_\\phi(z))]`
    (no baseline), whose variance :func:`gradient_snr` can compare with the
    reparameterized estimator's. Importance-weighted objectives reject such guides.

    :param baseline: Pyro baseline options for every wrapped site, e.g.
        ``{"use_decaying_avg_baseline": True, "baseline_beta": 0.9}``: a running average
        of the downstream cost is subtracted from it, which keeps the estimator unbiased
        and lowers its variance (Ranganath et al., 2014). Baselines act only under
        :class:`~pyro.infer.TraceGraph_ELBO` (which also keeps only each site's
        downstream cost); ``Trace_ELBO`` ignores them.
    """
    messenger = ScoreFunctionMessenger(baseline)

    # functools.wraps keeps the guide's signature, so that the batch fields it takes
    # can still be found by name (pyro_aevb.contract.call_arguments).
    @functools.wraps(guide.forward if isinstance(guide, torch.nn.Module) else guide)
    def wrapped(*args, **kwargs):
        with messenger:
            return guide(*args, **kwargs)

    return wrapped


__all__ = [
    "GradientSNR",
    "SNRSummary",
    "ScoreFunctionDistribution",
    "gradient_snr",
    "score_function",
]
