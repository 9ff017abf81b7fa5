r"""The annealing path of AIS and its densities: the inverse temperatures
:math:`0 = \beta_0 < \dots < \beta_T = 1` (:func:`sigmoid_schedule`) and
:class:`PairDensity`, which evaluates :math:`\log f_0` and :math:`\log p(x, z)` of a
model/guide pair for ``C`` chains per data point as functions of flat unconstrained
states ``(C, B, D)`` (see :mod:`pyro_aevb.ais` for the path itself)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from ..contract import PairSummary, call_arguments, is_latent_site
from ..particles import log_prob_per_datapoint
from .kernel import AnnealedPoint

#: name of the plate that vectorizes the chains
CHAIN_PLATE = "_ais_chains"
#: initial distributions of the path
INITIALS = ("guide", "prior")


def sigmoid_schedule(num_steps: int, delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`\beta_0 = 0 < \dots < \beta_T = 1`, ``(T + 1,)``,
    float64: a logistic sigmoid of ``T + 1`` evenly spaced points in
    :math:`[-\delta, \delta]`, rescaled to :math:`[0, 1]` (Grosse et al., 2015). The
    steps are small at both ends, where :math:`\pi_\beta` changes fastest on most
    models, and largest in the middle."""
    if int(num_steps) < 1:
        raise ValueError(f"AIS needs at least 1 annealing step, got num_steps={num_steps}")
    s = torch.sigmoid(torch.linspace(-delta, delta, int(num_steps) + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _check_schedule(betas: torch.Tensor) -> torch.Tensor:
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if betas.numel() < 2 or betas[0] != 0 or betas[-1] != 1 or bool((betas.diff() <= 0).any()):
        raise ValueError(
            "an AIS schedule must increase strictly from 0 to 1 (at least two values), "
            f"got {betas.tolist()[:5]}..."
        )
    return betas


@dataclass
class _Site:
    """A continuous latent site: its place in the state vector and its bijection."""

    name: str
    shape: torch.Size  # the constrained value's shape, (C, ..., B, ...event)
    unconstrained_shape: torch.Size
    transform: object  # biject_to(support): unconstrained -> constrained
    size: int  # unconstrained numbers per chain and data point
    data_index: int  # the data plate's dim in the value


class PairDensity:
    r"""The log-densities :math:`\log f_0` and :math:`\log p(x, z)` of ``C`` chains for
    each point of one batch, as a function of flat unconstrained states ``(C, B, D)``.

    :param initial: ``"guide"`` (:math:`f_0 = q(z \mid x)`) or ``"prior"``
        (:math:`f_0 = p(z)`).
    :raises ValueError: for a discrete latent site that the guide does not enumerate, a
        model latent the guide does not sample, or a global latent.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        batch: Mapping[str, torch.Tensor],
        num_chains: int,
        summary: PairSummary,
        initial: str = "guide",
    ):
        if initial not in INITIALS:
            raise ValueError(f"initial must be one of {list(INITIALS)}, got '{initial}'")
        if summary.global_latent_sites:
            raise ValueError(
                f"AIS estimates log p(x) per data point, which needs every latent site inside "
                f"the data plate, but {summary.global_latent_sites} are global"
            )
        self.model, self.guide, self.initial = model, guide, initial
        self.num_chains = int(num_chains)
        self.batch_size = next(iter(batch.values())).shape[0]
        self.model_kwargs = call_arguments(model, batch, "model")
        self.guide_kwargs = call_arguments(guide, batch, "guide")
        self.nesting = summary.max_plate_nesting + 1  # the pair's plates + the chain plate
        self.data_dim = summary.data_dim
        trace = self._plain_guide_trace()
        self.enumerated = []
        continuous = []
        for name, site in trace.nodes.items():
            if not is_latent_site(site):
                continue
            how = site["infer"].get("enumerate")
            if how == "parallel":
                self.enumerated.append(name)
            elif site["fn"].support.is_discrete:
                raise ValueError(
                    f"guide site '{name}' is discrete ({type(site['fn']).__name__}); AIS moves "
                    "continuous latents with HMC and can sum out only discrete sites that the "
                    "guide marks infer={'enumerate': 'parallel'}; mark it so, or evaluate this "
                    "pair with importance sampling (method='importance')"
                )
            else:
                continuous.append(site)
        missing = [
            n
            for n in summary.latent_sites
            if n not in {s["name"] for s in continuous} and n not in self.enumerated
        ]
        if missing:
            raise ValueError(
                f"the guide does not sample the model's latent site(s) {missing}; AIS needs the "
                "guide to cover every latent (a model site enumerated by the objective is not "
                "summed out here): add them to the guide"
            )
        if not continuous:
            raise ValueError("the guide has no continuous latent site for AIS to anneal")
        self.sites = []
        for site in continuous:
            value = site["value"]
            if value.dim() - site["fn"].event_dim != self.nesting:
                raise ValueError(
                    f"guide site '{site['name']}' has value shape {tuple(value.shape)}, which "
                    f"does not fill the {self.nesting - 1} plate(s) of the pair; declare its "
                    "batch dims with pyro.plate"
                )
            transform = biject_to(site["fn"].support)
            u = transform.inv(value)
            size = u[:1].numel() // (u.shape[self.nesting + self.data_dim])
            self.sites.append(
                _Site(
                    site["name"],
                    value.shape,
                    u.shape,
                    transform,
                    size,
                    self.nesting + self.data_dim,
                )
            )
        self.dim = sum(s.size for s in self.sites)
        self._validate = is_validation_enabled()

    def _chains(self):
        return pyro.plate(CHAIN_PLATE, self.num_chains, dim=-self.nesting)

    def _plain_guide_trace(self):
        with self._chains():
            return poutine.trace(self.guide).get_trace(**self.guide_kwargs)

    # -- states <-> latent values ----------------------------------------------------------

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Constrained latent values (each the guide's shape) to flat states ``(C, B, D)``."""
        parts = []
        for s in self.sites:
            u = s.transform.inv(values[s.name].expand(s.shape))
            u = u.movedim(s.data_index, 1)
            parts.append(u.reshape(self.num_chains, self.batch_size, s.size))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Flat states to constrained values and the log-Jacobian per chain and point."""
        values, log_jacobian, start = {}, torch.zeros(()), 0
        for s in self.sites:
            moved = list(s.unconstrained_shape)
            moved.insert(1, moved.pop(s.data_index))
            part = u[..., start : start + s.size].reshape(moved).movedim(1, s.data_index)
            start += s.size
            value = s.transform(part)
            values[s.name] = value
            ladj = s.transform.log_abs_det_jacobian(part, value)
            if ladj.dim() < self.nesting:
                ladj = ladj.reshape((1,) * (self.nesting - ladj.dim()) + tuple(ladj.shape))
            ladj = ladj.expand(s.unconstrained_shape[: self.nesting] + ladj.shape[self.nesting :])
            ladj = ladj.movedim(s.data_index, 1).reshape(self.num_chains, self.batch_size, -1)
            log_jacobian = log_jacobian + ladj.sum(-1)
        return values, log_jacobian

    def sample_initial(self) -> torch.Tensor:
        """States drawn from :math:`f_0`: the guide run as is (enumerated sites sampled,
        which draws :math:`z` from the mixture :math:`\\sum_y q(y|x) q(z|x,y)`), or the
        model's prior."""
        if self.initial == "guide":
            trace = self._plain_guide_trace()
        else:
            with self._chains():
                trace = poutine.trace(self.model).get_trace(**self.model_kwargs)
        return self.pack({s.name: trace.nodes[s.name]["value"] for s in self.sites})

    # -- densities ---------------------------------------------------------------------------

    def log_densities(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(\log f_0, \log p(x, z))` at states ``u``, each ``(C, B)``, with the
        log-Jacobian of :math:`u \to z` added to both."""
        values, log_jacobian = self.unpack(u)
        nesting = self.nesting
        with self._chains():
            guide = poutine.enum(
                poutine.condition(self.guide, data=values), first_available_dim=-nesting - 1
            )
            guide_trace = poutine.trace(guide).get_trace(**self.guide_kwargs)
            enumerated = poutine.Trace()
            for name in self.enumerated:
                enumerated.add_node(name, **guide_trace.nodes[name])
            model = poutine.replay(poutine.condition(self.model, data=values), trace=enumerated)
            model_trace = poutine.trace(model).get_trace(**self.model_kwargs)
        num_enum = len(self.enumerated)
        latent_names = set(values) | set(self.enumerated)

        def total(sites):
            out = torch.zeros(())
            for site in sites:
                out = out + log_prob_per_datapoint(site, nesting, self.data_dim, num_enum)
            shape = (1,) * num_enum + (self.num_chains, self.batch_size)
            out = out.expand(torch.broadcast_shapes(out.shape, shape))
            # sum the enumerated values out: log sum_y exp(...)
            return out.reshape(-1, self.num_chains, self.batch_size).logsumexp(0)

        model_sites = [
            s
            for s in model_trace.nodes.values()
            if s["type"] == "sample" and not site_is_subsample(s)
        ]
        log_joint = total(model_sites)
        if self.initial == "guide":
            log_initial = total(guide_trace.nodes[n] for n in latent_names)
        else:
            log_initial = total(s for s in model_sites if s["name"] in latent_names)
        return log_initial + log_jacobian, log_joint + log_jacobian

    def __call__(self, u: torch.Tensor) -> AnnealedPoint:
        """The :class:`AnnealedPoint` at states ``u`` ``(C, B, D)``; a state with a
        non-finite coordinate gets density :math:`-\\infty` (so HMC rejects it)."""
        finite = torch.isfinite(u).all(-1)
        safe = torch.where(finite[..., None], u, torch.zeros_like(u)).detach().requires_grad_()
        # Distribution arguments are validated on the first evaluation only: afterwards
        # the same sites see new values of the same shapes, and checks cost a third.
        with torch.enable_grad(), pyro.validation_enabled(self._validate):
            log_initial, log_joint = self.log_densities(safe)
            grad_joint = torch.autograd.grad(log_joint.sum(), safe, retain_graph=True)[0]
            grad_initial = torch.autograd.grad(log_initial.sum(), safe)[0]
        bad = ~finite
        self._validate = False
        log_initial = log_initial.detach().masked_fill(bad, -torch.inf)
        log_joint = log_joint.detach().masked_fill(bad, -torch.inf)
        return AnnealedPoint(u, log_initial, log_joint, grad_initial, grad_joint)
