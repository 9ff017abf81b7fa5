"""Named model/guide pairs for the command line: one module per pair.

Each module of this package builds one pair (:class:`~pyro_aevb.pairs.spec.PairSpec`):
its builder, whose signature declares the pair's options (:class:`Option`), its default
training settings, and the metrics, figures and summary lines only it has. The registry
(:mod:`pyro_aevb.pairs.registry`) finds them, so a new pair is one new file: here, in a
module named by ``PYRO_AEVB_PAIRS``, or in an installed package's ``pyro_aevb.pairs``
entry point. ``pyro-aevb fit NAME`` then trains it with its own ``--help``.
"""

# The library's own pairs are imported by the names the tutorials and benchmarks use;
# the registry finds them (and any new module here) without these lines.
from .cvae import PAIR as CVAE_PAIR
from .fa import PAIR as FA_PAIR
from .gmvae import PAIR as GMVAE_PAIR
from .registry import ENVIRONMENT_VARIABLE, available_pairs, get_pair, load_pairs, register_pair
from .spec import Option, PairOption, PairSpec, pair_options
from .vae import PAIR as VAE_PAIR
from .vrnn import PAIR as VRNN_PAIR

__all__ = [
    "CVAE_PAIR",
    "ENVIRONMENT_VARIABLE",
    "FA_PAIR",
    "GMVAE_PAIR",
    "Option",
    "PairOption",
    "PairSpec",
    "VAE_PAIR",
    "VRNN_PAIR",
    "available_pairs",
    "get_pair",
    "load_pairs",
    "pair_options",
    "register_pair",
]
