r"""The results of an evaluation, and the checks that mathematics puts on them.

:class:`ImportanceEstimate` holds the per-data-point numbers of
:func:`pyro_aevb.particles.estimators.importance_log_likelihood`; :class:`Evaluation` those of
:func:`pyro_aevb.evaluate`, with :meth:`Evaluation.problems` naming what no lower bound
of :math:`\log p(x)` can be, and :meth:`Evaluation.metrics` the summary written to
``metrics.json`` (nats per data point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ImportanceEstimate lives with its estimator in the particles layer; importable from here
from .particles.estimators import ImportanceEstimate


class ImplausibleEstimateError(ValueError):
    """An estimate that mathematics rules out (see :meth:`Evaluation.problems`): a bug or
    a numerically diverged model, never a result. ``evaluation`` holds the numbers."""

    def __init__(self, message: str, evaluation: Evaluation, problems: list[str]):
        super().__init__(message)
        self.evaluation = evaluation
        self.problems = problems


#: how many standard errors an estimate may stray above a bound before it is refused
BOUND_SLACK_SE = 4.0


@dataclass
class Evaluation:
    """Test metrics of a pair; :meth:`metrics` gives the summary written to ``metrics.json``."""

    elbo: torch.Tensor
    importance: ImportanceEstimate
    #: closed-form log-evidence per data point, for models that have one
    log_evidence: torch.Tensor | None = None
    #: whether every observed site has a discrete distribution (Bernoulli, categorical):
    #: then p(x) <= 1, so log p(x) <= 0 for every data point
    discrete_likelihood: bool = False
    #: the pair has no latent sites: the ELBO is log p(x) exactly, and so is the
    #: "importance" estimate (one weight, no Monte Carlo error), reported as exact
    exact: bool = False

    def problems(self) -> list[str]:
        r"""What the estimates violate, in words; empty when they are plausible.

        Both the ELBO and the importance-sampled estimate are stochastic *lower* bounds
        of :math:`\log p(x)`: :math:`\mathbb{E}[\log \hat p_K(x)] \le \log p(x)`
        (Jensen; Burda et al., 2016). Their mean over test points may therefore exceed
        the mean exact evidence only by sampling noise, judged by the standard error of
        the per-point differences (:data:`BOUND_SLACK_SE` of them, plus float32
        round-off). For a discrete likelihood :math:`p(x) \le 1`, so the bound is 0.
        Non-finite means are refused too.
        """
        out = []
        n = self.elbo.numel()
        estimates = {
            "test ELBO": self.elbo.double(),
            "importance-sampled log-likelihood": self.importance.log_likelihood.double(),
        }
        for name, values in estimates.items():
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                out.append(f"the {name} is not finite for {bad} of {n} test points")
        if out:
            return out

        def above(values: torch.Tensor, bound: torch.Tensor, bound_name: str, name: str):
            diff = values - bound
            se = float(diff.std() / math.sqrt(n)) if n > 1 else 0.0
            # float32 log-densities summed over D dimensions carry a relative round-off
            tolerance = BOUND_SLACK_SE * se + 1e-3 + 1e-5 * float(bound.abs().mean())
            excess = float(diff.mean())
            if excess > tolerance:
                ses = f"{excess / se:.3g} standard errors" if se > 0 else "with no noise"
                out.append(
                    f"the {name} ({float(values.mean()):.6g} nats per data point) is above "
                    f"{bound_name} ({float(bound.mean()):.6g}) by {excess:.3g} nats, {ses}, "
                    "which a lower bound of log p(x) cannot be"
                )

        for name, values in estimates.items():
            if self.log_evidence is not None:
                evidence = self.log_evidence.double().to(values.device)
                above(values, evidence, "the exact log-evidence", name)
            if self.discrete_likelihood:
                above(
                    values,
                    torch.zeros_like(values),
                    "0, the most log p(x) can be for a discrete likelihood,",
                    name,
                )
        return out

    def metrics(self) -> dict:
        """Means over data points (nats per data point) with their standard errors."""
        n = self.elbo.numel()
        se = lambda t: float(t.std() / math.sqrt(n)) if n > 1 else float("nan")
        ll = self.importance.log_likelihood
        out = {
            "test_elbo": float(self.elbo.mean()),
            "test_elbo_se": se(self.elbo),
            "test_log_likelihood": float(ll.mean()),
            "test_log_likelihood_se": se(ll),
            "log_likelihood_particles": self.importance.num_particles,
            "ess_mean": float(self.importance.ess.mean()),
            "num_test_points": n,
        }
        if self.exact:
            # nothing was sampled: no particles, no effective sample size
            del out["log_likelihood_particles"], out["ess_mean"]
            out["log_likelihood_exact"] = True
        if self.importance.pareto_k is not None:
            k = self.importance.pareto_k
            out["pareto_k_mean"] = float(k.mean())
            out["pareto_k_fraction_above_0.7"] = float((k > 0.7).double().mean())
        if self.log_evidence is not None:
            out["test_log_evidence"] = float(self.log_evidence.mean())
            out["test_log_evidence_se"] = se(self.log_evidence)
        problems = self.problems()
        if problems:
            # an API user who built or kept an Evaluation by hand sees it in the numbers too
            out["problems"] = problems
        return out
