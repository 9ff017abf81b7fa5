r"""The particle engine: per-data-point log importance weights of vectorized particles,
for the training objectives (:mod:`pyro_aevb.importance_weighted`) and for evaluation
(:mod:`pyro_aevb.evaluation`) alike.

For a minibatch of ``B`` points and ``P`` particles per point, both need

.. math::

    \log w_{k,i} = \log p_\theta(x_i, z_{k,i}) - \log q_\phi(z_{k,i} \mid x_i),
    \qquad z_{k,i} \sim q_\phi(z \mid x_i),

as a ``(P, B)`` tensor. :func:`trace_particles` runs the guide once inside an extra
plate of ``P`` particles, :data:`PARTICLE_PLATE`, and the model replayed on its
samples. One plate convention throughout: with the pair's own plates nested
``n`` deep (:attr:`pyro_aevb.contract.PairSummary.max_plate_nesting`), the particle
plate sits at dim ``-(n + 1)`` (:func:`particle_dim`), so that, as Pyro counts, an
objective drawing vectorized particles has ``max_plate_nesting = n + 1``; guide sites
enumerated in parallel (evaluation only) take the dims to its left. Each site's
log-density is summed over every dimension but the particle plate and the data plate
(:func:`log_prob_per_datapoint`).

The log-densities are *unscaled*: the data plate's subsample scale ``N / B`` (and
any ``poutine.scale`` around the whole pair, as :func:`pyro_aevb.fit` applies) must
multiply the per-point bound, after the log-sum-exp over particles, not the
log-weights. :func:`check_sites` returns that scale and checks that every site
carries the same one.

Which pairs the training objectives accept (:func:`check_sites`), and why:

* every latent site lies inside ``pyro.plate("data")``: a global latent couples
  all data points, so there is no per-point weight to average;
* every guide site is reparameterizable: the objectives differentiate through
  the samples (score-function IWAE gradients are not implemented);
* the guide samples every latent site of the model and nothing is marked for
  enumeration (sum discrete sites out with the ``enum`` objective instead).

Evaluation differentiates nothing and accepts more (:func:`importance_terms`): guide
sites marked for enumeration are summed out, and a model latent the guide does not
sample is drawn from its prior, which is then part of the proposal and cancels from the
weight. Pairs that cannot broadcast over a leading particle dimension are evaluated one
particle per pass (:func:`probe_particle_mode`); :func:`summarize_pair` runs the contract's
check of a pair and then that probe. The estimators evaluation and training's per-epoch
test ELBO share are in :mod:`pyro_aevb.particles.estimators`.
"""

from .checks import check_sites
from .draws import ParticleDraws, draw_particles, guide_log_density_at
from .engine import (
    PARTICLE_PLATE,
    ParticleTraces,
    log_prob_per_datapoint,
    particle_dim,
    trace_particles,
)
from .importance import LOOP_ADVICE, importance_terms, probe_particle_mode
from .summary import summarize_pair

__all__ = [
    "LOOP_ADVICE",
    "PARTICLE_PLATE",
    "ParticleDraws",
    "ParticleTraces",
    "check_sites",
    "draw_particles",
    "guide_log_density_at",
    "importance_terms",
    "log_prob_per_datapoint",
    "particle_dim",
    "probe_particle_mode",
    "summarize_pair",
    "trace_particles",
]
