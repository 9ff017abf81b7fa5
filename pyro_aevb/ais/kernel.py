r"""Hamiltonian Monte Carlo transitions for many independent chains at once, on the
geometric path of annealed importance sampling (:mod:`pyro_aevb.ais`): the transition
kernel of AIS.

A state is a tensor ``u`` of shape ``(C, B, D)``: ``C`` chains for each of ``B`` data
points, each a point of :math:`\mathbb{R}^D` (the unconstrained latents of one data
point, flattened). The annealed log-density at inverse temperature :math:`\beta` is

.. math::

    \log \pi_\beta(u) = (1 - \beta) \log f_0(u) + \beta \log f_1(u),

with :math:`f_0` the initial density (the guide or the prior) and :math:`f_1` the
joint :math:`p(x, z)`, both including the log-Jacobian of the map from ``u`` to the
constrained latents. An :class:`AnnealedPoint` keeps both terms and their gradients,
so one evaluation serves every :math:`\beta`.

One transition (Neal, 2011, "MCMC using Hamiltonian dynamics") draws a momentum
:math:`p \sim \mathcal{N}(0, I)`, runs ``L`` leapfrog steps of size
:math:`\epsilon_i` (one per data point, shared by its chains) and accepts the end
point with probability :math:`\min(1, e^{H_0 - H_1})`, :math:`H = -\log\pi_\beta(u)
+ \tfrac12 |p|^2`, independently per chain. The leapfrog map is volume-preserving
and reversible under :math:`p \to -p`, so the Metropolis correction makes every
transition leave :math:`\pi_\beta` invariant, whatever :math:`\epsilon` and ``L``.
A trajectory that leaves the region where the densities are finite is rejected.

**Why not Pyro's HMC pieces.** Pyro's ``pyro.infer.mcmc`` was read for this (Pyro 1.9):

* :class:`pyro.infer.mcmc.HMC` runs one chain of one model (or a few chains in separate
  processes) with *one* scalar step size, adapted by dual averaging during warm-up and then
  frozen; AIS needs ``C x B`` chains in one vectorized batch, one step size per data point
  adapted along the path, and a new target :math:`\pi_\beta` at every transition. It does
  not serve this.
* :func:`pyro.ops.integrator.velocity_verlet` would accept per-data-point step sizes: its
  ``step_size`` is only multiplied with the momenta, so a ``(1, B, 1)`` tensor broadcasts
  (checked). But its ``potential_fn`` returns one scalar, and it hands back that summed
  potential only, not the per-chain energies the Metropolis test needs, nor
  :math:`\log f_0` and :math:`\log f_1` apart, which the AIS weight increment at the next
  temperature needs (one density evaluation serves every :math:`\beta` here through
  :class:`AnnealedPoint`). Using it would cost a second density evaluation per transition,
  or a side channel around its return value; and its two half kicks between position
  steps round differently from the one full kick used here, so the log-weights would
  change at round-off (and, through rare flipped accept decisions, beyond it). Its
  ``potential_grad`` also sets ``requires_grad`` on the caller's tensors in place.
  The leapfrog below is the same integrator, written for :class:`AnnealedPoint`.
* The potential functions of ``pyro.infer.mcmc.util.initialize_model`` sum the log-density
  of the whole model into one scalar over unconstrained sites; AIS needs it per data point
  and per chain, with the guide's density next to the model's (:mod:`pyro_aevb.ais.path`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch


@dataclass
class AnnealedPoint:
    """The two log-densities of the path and their gradients at states ``u``."""

    #: states, ``(C, B, D)``
    u: torch.Tensor
    #: :math:`\log f_0(u)`, ``(C, B)``
    log_initial: torch.Tensor
    #: :math:`\log f_1(u) = \log p(x, z(u)) + \log |\det \partial z / \partial u|`, ``(C, B)``
    log_joint: torch.Tensor
    #: gradients of the two with respect to ``u``, each ``(C, B, D)``
    grad_initial: torch.Tensor
    grad_joint: torch.Tensor

    def log_target(self, beta: float) -> torch.Tensor:
        r""":math:`\log \pi_\beta(u)` up to its normalizer, ``(C, B)``."""
        return (1.0 - beta) * self.log_initial + beta * self.log_joint

    def grad_target(self, beta: float) -> torch.Tensor:
        return (1.0 - beta) * self.grad_initial + beta * self.grad_joint

    def where(self, keep: torch.Tensor, other: AnnealedPoint) -> AnnealedPoint:
        """This point where ``keep`` ``(C, B)`` is true, ``other`` elsewhere."""
        out = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            mask = keep.reshape(keep.shape + (1,) * (mine.dim() - keep.dim()))
            out[f.name] = torch.where(mask, mine, theirs)
        return AnnealedPoint(**out)


def hmc_transition(
    point: AnnealedPoint,
    density: Callable[[torch.Tensor], AnnealedPoint],
    beta: float,
    step_size: torch.Tensor,
    num_leapfrog: int,
) -> tuple[AnnealedPoint, torch.Tensor]:
    r"""One HMC transition that leaves :math:`\pi_\beta` invariant, for every chain.

    :param point: the current states and their densities.
    :param density: ``u -> AnnealedPoint`` at new states ``(C, B, D)``.
    :param step_size: leapfrog step :math:`\epsilon_i` per data point, ``(B,)``.
    :param num_leapfrog: leapfrog steps ``L`` per transition.
    :returns: the new point and the acceptance probabilities ``(C, B)``.
    """
    eps = step_size.reshape(1, -1, 1).to(point.u)
    momentum = torch.randn_like(point.u)
    energy = -point.log_target(beta) + 0.5 * momentum.pow(2).sum(-1)
    u = point.u
    momentum = momentum + 0.5 * eps * point.grad_target(beta)
    proposal = point
    for step in range(num_leapfrog):
        u = u + eps * momentum
        proposal = density(u)
        last = step == num_leapfrog - 1
        momentum = momentum + (0.5 if last else 1.0) * eps * proposal.grad_target(beta)
    new_energy = -proposal.log_target(beta) + 0.5 * momentum.pow(2).sum(-1)
    log_accept = (energy - new_energy).clamp(max=0.0)
    # A diverged trajectory (NaN or infinite energy) is rejected.
    log_accept = torch.where(torch.isfinite(log_accept), log_accept, -torch.inf)
    accept_prob = log_accept.exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    return proposal.where(accept, point), accept_prob
