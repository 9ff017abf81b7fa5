r"""Importance-weighted objectives, per data point, and their gradient estimators.

With :math:`K` particles :math:`z_{1:K} \sim q_\phi(z \mid x)` and weights
:math:`w_k = p_\theta(x, z_k) / q_\phi(z_k \mid x)`, the importance-weighted bound
of Burda et al. (2016) is

.. math::

    \mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K w_k\Big]
    \le \mathcal L_{K+1}(x) \le \log p_\theta(x),
    \qquad \mathcal L_1 = \text{ELBO}.

Every objective here forms the weights *per data point* (the particle plate and
the data plate are kept apart, :mod:`pyro_aevb.particles`), takes the log-mean-exp
over particles, sums over the data plate and multiplies by the data plate's
subsample scale :math:`N/B`, so that, as with :class:`~pyro.infer.Trace_ELBO`,
``loss`` is an unbiased estimate of minus the full-data bound. (Pyro's
:class:`~pyro.infer.RenyiELBO` weights the whole minibatch jointly instead.)
Particles are drawn in one vectorized pass.

=================  ===============================================================
class              bound (loss = -bound) and gradient
=================  ===============================================================
:class:`IWAE`      :math:`\mathcal L_K`, gradient through the reparameterized samples
:class:`DReG`      :math:`\mathcal L_K`, doubly reparameterized guide gradient
                   (Tucker et al., 2019)
:class:`MIWAE`     :math:`\frac1M \sum_m \mathcal L_K^{(m)}`, M independent bounds
:class:`CIWAE`     :math:`\beta\,\text{ELBO} + (1-\beta)\,\mathcal L_K` on the same draws
:class:`PIWAE`     model follows :math:`\mathcal L_{MK}`, guide follows MIWAE(M, K)
:class:`STLELBO`   the ELBO with the path-derivative ("sticking the landing")
                   guide gradient (Roeder et al., 2017)
=================  ===============================================================

Rainforth et al. (2018) show that the signal-to-noise ratio of the standard IWAE
guide gradient falls like :math:`O(1/\sqrt K)` while the model's rises like
:math:`O(\sqrt K)`; MIWAE, CIWAE and PIWAE trade the two, DReG removes the
problem for the guide. :func:`pyro_aevb.diagnostics.gradient_snr` measures it.

The classes follow the template of Pyro's ``ELBO`` subclasses:
:class:`ImportanceWeightedELBO` draws the particles (:meth:`~ImportanceWeightedELBO._draw`)
and forms the loss; a subclass says which bound it is (:meth:`bound`) and, when its
gradient is not the plain reparameterized gradient of that bound, how it builds the
surrogate (:class:`SplitGradientELBO` with per-particle weights for the model and the
guide, :class:`PathDerivativeELBO` for path-derivative guide gradients).

Requirements (checked on every call, see :mod:`pyro_aevb.particles`): every latent
site inside ``pyro.plate("data")`` and sampled by the guide with a
reparameterizable distribution; no enumeration. DReG and STL on a guide with several
latent sites re-run the guide on the drawn latents and need it to be deterministic
given them.

As Pyro counts, ``max_plate_nesting`` includes the plate of particles: an objective
given ``max_plate_nesting=n`` (the pair's plates) holds ``n + 1``.

References: Burda, Grosse & Salakhutdinov (2016), Importance weighted
autoencoders; Roeder, Wu & Duvenaud (2017), Sticking the landing: simple,
lower-variance gradient estimators for variational inference; Rainforth et al.
(2018), Tighter variational bounds are not necessarily better; Tucker, Lawson, Gu
& Maddison (2019), Doubly reparameterized gradient estimators for Monte Carlo
objectives.
"""

from .base import (
    ImportanceWeightedELBO,
    PathDerivativeELBO,
    SplitGradientELBO,
    _split_surrogate_loss,
)
from .bounds import CIWAE, IWAE, MIWAE, PIWAE, STLELBO, DReG

__all__ = [
    "CIWAE",
    "IWAE",
    "MIWAE",
    "PIWAE",
    "STLELBO",
    "DReG",
    "ImportanceWeightedELBO",
    "PathDerivativeELBO",
    "SplitGradientELBO",
    "_split_surrogate_loss",
]
