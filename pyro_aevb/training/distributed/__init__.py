r"""Data-parallel training through Lightning Fabric: several processes, one run.

:func:`~pyro_aevb.fit` keeps its own loop (schedules, guards, exact resume); for
``devices > 1`` (or mixed precision, or a logger) `Lightning Fabric
<https://lightning.ai/docs/fabric/>`_ launches the processes, wraps the pair for
``DistributedDataParallel`` and handles precision. Fabric is imported only then: one
device with the default settings never imports it and runs exactly as before.

The package has three parts, as Lightning keeps settings, strategy and launcher apart:
:mod:`~pyro_aevb.training.distributed.settings` (validated before any process starts),
:mod:`~pyro_aevb.training.distributed.strategy` (what one rank does differently: the
strategy object handed to the loop) and :mod:`~pyro_aevb.training.distributed.launcher`
(starting the processes with the function each one runs).

The mathematics of a data-parallel step. One process at global batch :math:`B` of
:math:`N` points minimises

.. math:: L = \frac1N\Big[G + \frac NB\sum_{i\in\text{batch}}\ell_i\Big],

with :math:`G` the terms outside the data plate (global latents, priors of parameters)
and :math:`\ell_i` the per-data-point terms (for the importance-weighted bounds and
enumeration too: their bounds are sums over the data plate). Rank :math:`r` of
:math:`W` gets the consecutive chunk :math:`b_r` of the global batch (:math:`B_r`
points), its data plate scales by :math:`N/B_r` (the per-rank batch, as for any
minibatch), and its loss is weighted by :math:`w_r = W B_r / B`:

.. math:: \frac1W\sum_r w_r\,\frac1N\Big[G + \frac N{B_r}\sum_{i\in b_r}\ell_i\Big]
          = \frac1N\Big[G + \frac NB\sum_{i\in\text{batch}}\ell_i\Big] = L,

so the mean that DDP's all-reduce takes of the per-rank gradients is the single-process
gradient, for chunks of any sizes (:math:`w_r = 1` when :math:`W` divides :math:`B`).
``batch_size`` is therefore the *global* batch, as in one process; each rank computes
about ``batch_size / W`` points per step.

Randomness. Shuffling and per-epoch transforms (dynamic binarization) draw from the run's
data generator, seeded alike on every rank: every rank draws the whole epoch's
permutation and transformed data set, the same as one process, and keeps its chunk, so
the union over ranks is exactly what one process draws. Network initialisation is seeded
alike too (and DDP broadcasts rank 0's values). The particle noise of the objective
(the guide's reparameterized samples, dropout) must differ between ranks, else the ranks
would reuse one another's noise: rank 0 keeps the stream seeded by ``seed`` (as one
process), rank ``r > 0`` reseeds Python, NumPy and PyTorch from ``(seed, r)``. A 2-rank
run thus draws other noise than a 1-process run (same distribution, so the same expected
gradient); with the noise fixed per data point, the two reach the same parameters up to
all-reduce round-off (``tests/test_distributed.py``).

Checkpoints are written by rank 0 only (atomically, as always), with every rank's RNG
state, so that ``resume`` continues every rank exactly. Every rank computes the history's
test ELBO itself (a single-process evaluation of the same parameters with the same seed,
identical on all ranks, so early stopping stops all of them together); rank 0's history
is the run's. The trained parameters come back to the calling process.

Launching. ``strategy="auto"`` forks the processes from the caller (no ``__main__`` guard
needed, nothing pickled); a forked process computes on one CPU thread, since GNU OpenMP
hangs a forked child's parallel region once the parent has used its threads.
``"ddp_spawn"`` starts fresh interpreters (the pair and data pickled; ``cores // N``
threads each), ``"ddp"`` is Fabric's script launcher (re-runs ``sys.argv``). Under an
outside launcher (torchrun, srun) every process calls :func:`~pyro_aevb.fit` itself.
"""


from .launcher import launch
from .settings import (
    ACCELERATORS,
    DEFAULTS,
    INSTALL_HINT,
    LOGGERS,
    PRECISIONS,
    STRATEGIES,
    FabricMissingError,
    RankFailedError,
    Settings,
    add_cli_options,
    check_batch_split,
    fit_options,
    require_fabric,
    resolve_settings,
)
from .strategy import (
    DistributedStep,
    FabricStrategy,
    ObjectiveModule,
    RankContext,
    rank_seed,
    unreached_parameters,
)

__all__ = [
    "ACCELERATORS",
    "DEFAULTS",
    "INSTALL_HINT",
    "LOGGERS",
    "PRECISIONS",
    "STRATEGIES",
    "DistributedStep",
    "FabricMissingError",
    "FabricStrategy",
    "ObjectiveModule",
    "RankContext",
    "RankFailedError",
    "Settings",
    "add_cli_options",
    "check_batch_split",
    "fit_options",
    "launch",
    "rank_seed",
    "require_fabric",
    "resolve_settings",
    "unreached_parameters",
]
