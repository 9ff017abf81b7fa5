r"""Posterior collapse, measured: per-dimension KL, active units and the mutual information
between data and code.

For a pair whose latent sites lie in the data plate and a test set :math:`x_1..x_N`,
:func:`collapse_report` computes, in nats per data point,

* the KL of each latent dimension :math:`j` (one coordinate of a site's event),
  :math:`\mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j \mid x_n) \,\|\, p(z_j))`:
  in closed form when both densities factorize into univariate Normals along the event
  (the VAE's diagonal guide and standard normal prior),
  :math:`\log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{2\sigma_p^2}
  - \frac12`, else by Monte Carlo from the per-dimension log-densities
  :math:`\log q_j(z_j) - \log p_j(z_j)`, :math:`z \sim q(z \mid x_n)`, when both are
  ``Independent`` of univariate bases. Densities that couple dimensions (a full
  covariance, a flow) have no per-dimension KL and are refused
  (:class:`UnsupportedPairError`). Shape ``(L,)`` over all units of all sites.
* active units (Burda et al., 2016): :math:`A_j = \mathrm{Var}_x(\mathbb
  E_q[z_j \mid x]) > \delta`, :math:`\delta = 0.01`; a collapsed unit's posterior mean
  does not move with :math:`x`.
* the "ELBO surgery" split (Hoffman & Johnson, 2016) of the average KL under the
  aggregate posterior :math:`q(z) = \frac1N \sum_m q(z \mid x_m)`,

  .. math::

      \frac1N \sum_n \mathrm{KL}(q(z \mid x_n) \,\|\, p(z))
      = I_q(x; z) + \mathrm{KL}(q(z) \,\|\, p(z)),

  estimated with :math:`S` draws :math:`z_{ns} \sim q(z \mid x_n)` and
  :math:`\log q(z_{ns}) = \log \frac1N \sum_m q(z_{ns} \mid x_m)` (``N * S * N``
  densities, batched): :math:`\hat I = \overline{\log q(z_{ns} \mid x_n) - \log
  q(z_{ns})}`, :math:`\widehat{\mathrm{KL}} = \overline{\log q(z_{ns}) - \log
  p(z_{ns})}`; their sum is the Monte Carlo average KL from the same draws, so the
  identity holds by construction.

**Bias.** With :math:`x` uniform over the :math:`N` points the aggregate posterior is
exactly that mixture and both estimates are unbiased for that empirical joint. As
estimates of the population quantities they are biased: the mixture holds the point's
own :math:`q(z \mid x_n)`, which raises :math:`\log q(z_{ns})` near its own draws, so
:math:`\hat I` is low and the marginal KL high by the same amount, and
:math:`\hat I \le \log N` always (the term :math:`m = n` alone gives
:math:`q(z_{ns}) \ge q(z_{ns} \mid x_n) / N`). An estimate near :math:`\log N` says the
codes are as distinct as :math:`N` points allow; use more points to see further.

The mutual information needs a guide whose sites are independent given :math:`x` and a
prior that does not depend on the data; otherwise those fields are ``None`` and
:attr:`CollapseReport.unavailable` says why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..arguments import batch_rows
from ..contexts import eval_mode, isolated
from ..contract import batch_size_of, check_pair
from .terms import (
    MAX_ELEMENTS,
    UnsupportedPairError,
    _aggregate_log_density,
    _batch_terms,
    _BatchTerms,
)

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "MAX_ELEMENTS",
    "CollapseReport",
    "UnsupportedPairError",
    "collapse_report",
]

#: Burda et al.'s threshold on Var_x(E_q[z_j | x]) for an active unit
ACTIVE_UNIT_THRESHOLD = 0.01

COLLAPSE_ADVICE = (
    "to keep the code in use, anneal the KL weight from near 0 (fit(kl_annealing="
    "KLAnnealing(1.0, warmup_steps=...))), give each dimension free bits (objective "
    "'free_bits' with --free-bits, nats per dimension), use a more flexible posterior "
    "(a flow guide), or weaken the decoder (smaller, or less autoregressive)"
)


@dataclass
class CollapseReport:
    """Posterior-collapse diagnostics of a pair on a test set (nats per data point)."""

    #: unit names, ``"site[j]"`` (the event flattened), one per latent dimension
    units: list[str]
    #: KL(q(z_j | x) || p(z_j)) averaged over the test points, ``(L,)``, nats per point
    kl_per_dim: torch.Tensor
    #: its standard error over test points (and draws, for "monte carlo"), ``(L,)``
    kl_per_dim_se: torch.Tensor
    #: ``"analytic"`` (every site Normal/Normal) or ``"monte carlo"``
    kl_method: str
    #: Var_x(E_q[z_j | x]) over the test points, ``(L,)``
    mean_variance: torch.Tensor
    threshold: float
    num_points: int
    num_samples: int
    #: I(x; z) under the aggregate posterior, nats, <= log(num_points); None if unavailable
    mutual_information: float | None = None
    mutual_information_se: float | None = None
    #: KL(q(z) || p(z)) of the aggregate posterior, nats; None if unavailable
    marginal_kl: float | None = None
    #: the Monte Carlo average KL from the same draws: mutual_information + marginal_kl
    average_kl_mc: float | None = None
    average_kl_mc_se: float | None = None
    #: quantity -> why it could not be computed
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> torch.Tensor:
        """Boolean ``(L,)``: whether each unit is active."""
        return self.mean_variance > self.threshold

    @property
    def active_units(self) -> int:
        return int(self.active.sum())

    @property
    def num_units(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict:
        """JSON-able summary for ``metrics.json``; units in the key names."""
        out = {
            "active_units": self.active_units,
            "num_units": self.num_units,
            "active_unit_threshold": self.threshold,
            "kl_nats_total": float(self.kl_per_dim.sum()),
            "kl_nats_per_dim": self.kl_per_dim.tolist(),
            "kl_nats_per_dim_se": self.kl_per_dim_se.tolist(),
            "kl_method": self.kl_method,
            "posterior_mean_variance_per_dim": self.mean_variance.tolist(),
            "collapse_points": self.num_points,
            "collapse_samples_per_point": self.num_samples,
        }
        if self.mutual_information is not None:
            out["mutual_information_nats"] = self.mutual_information
            out["mutual_information_nats_se"] = self.mutual_information_se
            out["mutual_information_nats_max"] = math.log(self.num_points)
            out["marginal_kl_nats"] = self.marginal_kl
        if self.unavailable:
            out["collapse_unavailable"] = dict(self.unavailable)
        return out


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _subsample(fields: Mapping, max_points: int | None, seed: int) -> tuple[dict, int]:
    """At most ``max_points`` test points, a seeded random subset (in their order)."""
    n = batch_size_of(fields)
    if max_points is None or max_points >= n:
        return dict(fields), n
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=generator)[:max_points].sort().values
    return {k: batch_rows(v, index, k, n) for k, v in fields.items()}, max_points


def _latent_names(summary, sites) -> list[str]:
    if summary.global_latent_sites:
        raise UnsupportedPairError(
            f"latent site(s) {summary.global_latent_sites} are global (outside the data "
            "plate); the collapse diagnostics need per-data-point latents"
        )
    if sites is None:
        return list(summary.latent_sites)
    unknown = sorted(set(sites) - set(summary.latent_sites))
    if unknown or not sites:
        raise ValueError(f"sites must name latent sites of {summary.latent_sites}, got {sites}")
    return [n for n in summary.latent_sites if n in sites]


def _mean_and_se(per_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over points (dim 0) and its standard error (NaN for one point)."""
    n = per_point.shape[0]
    se = per_point.std(0) / math.sqrt(n) if n > 1 else torch.full_like(per_point[0], math.nan)
    return per_point.mean(0), se


def _cat(parts: list[_BatchTerms], key: str, names: list[str]) -> torch.Tensor:
    """``(N, S, L)``: points of every batch, units of every site."""
    return torch.cat(
        [torch.cat([getattr(p, key)[n].double() for p in parts], 0) for n in names], -1
    )


def collapse_report(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    *,
    num_samples: int = 10,
    max_points: int | None = 1000,
    threshold: float = ACTIVE_UNIT_THRESHOLD,
    batch_size: int = 100,
    sites: list[str] | None = None,
    seed: int = 0,
    analytic_kl: bool = True,
    warn: bool = True,
) -> CollapseReport:
    r"""Per-dimension KL, active units and :math:`I(x; z)` of a pair on test data.

    :param fields: the test fields (``x``, ``y``, ...), each ``(N, ...)``, transformed
        to the likelihood's support and on the pair's device (as :func:`pyro_aevb.evaluate`
        prepares them).
    :param num_samples: draws :math:`S` per point for the Monte Carlo terms.
    :param max_points: use a seeded random subset of at most this many points (the
        aggregate posterior costs :math:`N^2 S` densities); ``None``: all.
    :param threshold: :math:`\delta` of the active-unit test.
    :param sites: latent sites to diagnose (default all); the mutual information needs all.
    :param seed: seed of a private random stream (the caller's is left as it was).
    :param analytic_kl: use the Normal/Normal closed form where it applies (``False``:
        the Monte Carlo term everywhere).
    :param warn: warn (with what to do) when most units are inactive.
    :raises UnsupportedPairError: for densities that do not factorize per dimension,
        global, plated or masked latents.
    """
    num_samples = _positive_int(num_samples, "num_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    if max_points is not None:
        max_points = _positive_int(max_points, "max_points")
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < math.inf):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    fields, n = _subsample(fields, max_points, seed)
    batches = [
        {k: batch_rows(v, torch.arange(s, min(n, s + batch_size)), k, n) for k, v in fields.items()}
        for s in range(0, n, batch_size)
    ]
    device = next((v.device for v in fields.values() if isinstance(v, torch.Tensor)), None)
    with torch.no_grad(), isolated(seed, device), eval_mode(model, guide):
        summary = check_pair(model, guide, batches[0], allow_model_enumeration=True,
                             check_evaluation=False)  # fmt: skip
        names = [
            s for s in _latent_names(summary, sites) if s not in summary.enumerated_model_sites
        ]
        parts = [
            _batch_terms(model, guide, b, summary, names, num_samples, analytic_kl) for b in batches
        ]
    report = _summarize(parts, names, n, num_samples, float(threshold))
    if warn and report.active_units * 2 < report.num_units:
        warnings.warn(
            f"posterior collapse: only {report.active_units} of {report.num_units} latent "
            f"units are active (Var_x E_q[z_j | x] > {threshold}); the decoder ignores the "
            f"rest, whose KL is {float(report.kl_per_dim[~report.active].sum()):.3g} nats. "
            + COLLAPSE_ADVICE,
            stacklevel=2,
        )
    return report


def _summarize(parts, names, n, num_samples, threshold) -> CollapseReport:
    """Pool the batches' terms into a :class:`CollapseReport`."""
    kl, kl_se = _mean_and_se(_cat(parts, "kl", names).mean(1))
    means = _cat(parts, "mean", names).mean(1)  # (N, L): E_q[z_j | x_n]
    variance = means.var(0) if n > 1 else torch.zeros_like(means[0])
    units = []
    for name in names:
        size = parts[0].kl[name].shape[-1]
        units += [f"{name}[{j}]" for j in range(size)]
    report = CollapseReport(
        units=units,
        kl_per_dim=kl,
        kl_per_dim_se=kl_se,
        kl_method="analytic" if all(p.analytic for p in parts) else "monte carlo",
        mean_variance=variance,
        threshold=threshold,
        num_points=n,
        num_samples=num_samples,
    )
    notes = {k: v for p in parts for k, v in p.notes.items()}
    if notes:
        report.unavailable = notes
        return report
    log_q = torch.cat([p.log_q for p in parts]).double()  # (N, S)
    log_p = torch.cat([p.log_p for p in parts]).double()
    draws = {name: torch.cat([p.draws[name] for p in parts]) for name in names}
    log_aggregate = _aggregate_log_density(draws, [p.guide_fns for p in parts], n)
    information, information_se = _mean_and_se((log_q - log_aggregate).mean(1))
    report.mutual_information = float(information)
    report.mutual_information_se = float(information_se)
    report.marginal_kl = float((log_aggregate - log_p).mean())
    average, average_se = _mean_and_se((log_q - log_p).mean(1))
    report.average_kl_mc, report.average_kl_mc_se = float(average), float(average_se)
    return report
