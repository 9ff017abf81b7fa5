r"""Annealed importance sampling (AIS) of :math:`\log p(x)` per data point, and
bidirectional Monte Carlo (BDMC) to bracket it, for any model/guide pair.

**AIS** (Neal, 2001) moves ``C`` chains per data point through the geometric path

.. math::

    \pi_\beta(z) \propto f_0(z)^{1-\beta}\, p(x, z)^\beta,
    \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from a normalized :math:`f_0` (the guide :math:`q(z \mid x)`, default, or the prior
:math:`p(z)`) to the posterior. A chain starts at :math:`z_0 \sim f_0`; at each
step it adds :math:`(\beta_t - \beta_{t-1}) [\log p(x, z) - \log f_0(z)]` to its log
weight at its current state and then, for :math:`t < T`, makes a Hamiltonian Monte
Carlo transition that leaves :math:`\pi_{\beta_t}` invariant (:mod:`pyro_aevb.ais.kernel`).
Each weight then has mean :math:`p(x)`, so :math:`\log \frac1C \sum_c w_c` is a
stochastic lower bound on :math:`\log p(x)` (Jensen), tight as ``T`` grows. With
``T = 1`` it is importance sampling with ``C`` draws of :math:`f_0`.

**BDMC** (Grosse, Ghahramani & Adams, 2015; Wu et al., 2017, "On the quantitative
analysis of decoder-based generative models") simulates :math:`(x, z) \sim p` from
the model. For such :math:`x`, the exact posterior sample :math:`z` starts a *reverse*
chain from :math:`\beta = 1` to :math:`0`, whose weights have mean :math:`1/p(x)`; so
:math:`-\log \frac1C \sum_c w^{\rm rev}_c` is a stochastic *upper* bound. Forward and
reverse runs bracket :math:`\log p(x)`; the gap bounds the error of forward AIS with
the same settings on data like the model's.

The densities come from Pyro traces of the pair: the guide (with its sites marked
``infer={"enumerate": "parallel"}`` enumerated) and the model replayed on it, both
conditioned on the chains' latents ``z``, each site's log-density summed per data
point (:func:`pyro_aevb.particles.log_prob_per_datapoint`). Chains are an extra plate
to the left of the pair's, so chains x points are one vectorized batch. An enumerated
discrete site :math:`y` is summed out: :math:`p(x, z) = \sum_y p(x, y, z)` and
:math:`q(z \mid x) = \sum_y q(y \mid x)\, q(z \mid x, y)`, so the chains move ``z``
only. HMC runs on unconstrained coordinates :math:`u`, :math:`z = T(u)` with
``T = biject_to(support)``, the log-Jacobian added to both densities (it cancels from
the weights), so positive or simplex latents work too.

Step sizes adapt, one per data point shared by its chains, multiplicatively towards a
target acceptance rate: :math:`\epsilon \leftarrow \epsilon \exp(\gamma (\bar a -
a^*))` after each transition, with :math:`\bar a` the mean acceptance probability of
the point's chains at that transition. Every transition leaves its :math:`\pi_\beta`
invariant for the step size it uses, and that step size depends only on transitions
already made, never on the move it is used for; the weights are computed as without
adaptation. Strictly, because that past includes the chains' current states, the
estimator is then unbiased only as the number of chains grows (each chain's influence on
the shared step size is ``1/C``), as for adaptive SMC (Beskos et al., 2016); pass
``adapt=False`` for fixed step sizes, or give :func:`anneal` a per-transition schedule
(such as a previous run's :attr:`AnnealingRun.step_sizes`), and the weights are exactly
unbiased. All results are in nats per data point.

The package, by what each part does: :mod:`pyro_aevb.ais.path` (the schedule and the
pair's densities along the path), :mod:`pyro_aevb.ais.kernel` (the HMC transition),
:mod:`pyro_aevb.ais.estimator` (AIS per data point, and the entry point of
:func:`pyro_aevb.evaluate`), :mod:`pyro_aevb.ais.bidirectional` (BDMC and its checks).
"""

from .bidirectional import (
    CROSSED_ERROR_SE,
    MORE_STEPS_FACTOR,
    BDMCEstimate,
    CrossedBoundsError,
    CrossedBoundsWarning,
    bdmc,
    check_bracket,
    crossed_advice,
    simulate,
)
from .estimator import (
    AISEstimate,
    AISEvaluation,
    AnnealingRun,
    ais_evaluation,
    ais_log_likelihood,
    anneal,
    default_batch_size,
    intra_op_threads,
    log_mean_exp_with_se,
)
from .kernel import AnnealedPoint, hmc_transition
from .path import CHAIN_PLATE, INITIALS, PairDensity, sigmoid_schedule

__all__ = [
    "CHAIN_PLATE",
    "CROSSED_ERROR_SE",
    "MORE_STEPS_FACTOR",
    "INITIALS",
    "AISEstimate",
    "AISEvaluation",
    "AnnealedPoint",
    "AnnealingRun",
    "BDMCEstimate",
    "CrossedBoundsError",
    "CrossedBoundsWarning",
    "PairDensity",
    "ais_evaluation",
    "ais_log_likelihood",
    "anneal",
    "bdmc",
    "check_bracket",
    "crossed_advice",
    "default_batch_size",
    "hmc_transition",
    "intra_op_threads",
    "log_mean_exp_with_se",
    "sigmoid_schedule",
    "simulate",
]
