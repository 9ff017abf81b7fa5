r"""The variational RNN's guide, which shares the model's recurrent state (Chung et al., 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro_aevb.models.vrnn import PYRO_NAME, VRNN, broadcast_cat, latent_site
from torch import nn

from pyro_aevb.deprecation import module_getattr, renamed_method
from pyro_aevb.nn import MLP, DiagonalNormalHead
from pyro_aevb.plate import data_plate


class VRNNGuide(nn.Module):
    r"""Guide :math:`q(z_{1:T} \mid x_{1:T}) = \prod_t q_\phi(z_t \mid x_t, h_t)` with
    each factor a diagonal Gaussian
    :math:`\mathcal N(\mu_\phi(x_t, h_t), \operatorname{diag} \sigma^2_\phi(x_t, h_t))`.

    :math:`h_t` is the state of the *model's* LSTM, recomputed here from the guide's own
    draws :math:`z_{<t}` and the data :math:`x_{<t}`; so :math:`q` conditions on
    :math:`x_{\le t}, z_{<t}` and ignores :math:`x_{>t}`, the approximation of Chung et
    al. (2015) that lets the generative and the inference network share one recurrent
    network (Yang Zhi-Han, "Training Latent Variable Models with Auto-encoding
    Variational Bayes: A Tutorial", section 5.6).

    The guide keeps a reference to ``model`` without registering it as a submodule:
    its ``state_dict`` and ``parameters()`` hold only the encoder network, and it
    registers the model under the model's own Pyro name, so Pyro optimizes a single
    copy of the LSTM (counted as a model parameter by
    :func:`pyro_aevb.contract.check_pair`). Move, save and load the model together with
    the guide; a ``copy.deepcopy`` of the guide alone would carry its own model copy.

    :param model: the :class:`~pyro_aevb.models.vrnn.VRNN` whose LSTM it shares.
    :param hidden: hidden layer sizes of the network :math:`(x_t, h_t) \mapsto
        (\mu, \sigma)` (the last one feeds a softplus-scale head).

    Sites: ``z_1`` ... ``z_T``, each ``(B, L)`` in the data plate, written with
    ``pyro.markov``; called as ``guide(x, mask=None)`` like the model.
    """

    def __init__(self, model: VRNN, hidden: Sequence[int] = (256,)):
        super().__init__()
        if not isinstance(model, VRNN):
            raise ValueError(
                f"VRNNGuide shares the recurrent state of a VRNN model, got {type(model).__name__}"
            )
        hidden = tuple(hidden)
        in_dim = model.x_dim + model.rnn_dim
        self.trunk = MLP([in_dim, *hidden], activate_output=True) if hidden else nn.Identity()
        self.head = DiagonalNormalHead(hidden[-1] if hidden else in_dim, model.z_dim)
        # Bypass nn.Module.__setattr__: a registered submodule would put the model's
        # weights in the guide's state_dict and parameters a second time.
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> VRNN:
        """The model whose LSTM this guide runs."""
        return self._model

    #: the name under which the guide registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "vrnn_encoder"

    def encode(self, x_t: torch.Tensor, h_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(loc, scale)`` of :math:`q(z_t \mid x_t, h_t)`, each ``(..., L)``, batch dims
        broadcast."""
        return self.head(self.trunk(broadcast_cat(x_t, h_t)))

    posterior = renamed_method("encode", "posterior")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Sample ``z_1..z_T`` for a batch ``x`` ``(B, T, D)``; ``mask`` as in the model."""
        model = self._model
        x, mask = model.check_input(x, mask, owner=type(self).__name__)
        pyro.module(PYRO_NAME, model)
        pyro.module(self.pyro_name, self)
        num_steps = x.shape[1]
        state = model.initial_state(x)
        with data_plate(x):
            for t in pyro.markov(range(num_steps)):
                step_mask = mask if isinstance(mask, bool) else mask[:, t]
                with poutine.mask(mask=step_mask):
                    loc, scale = self.encode(x[:, t], state[0])
                    z_t = pyro.sample(latent_site(t), dist.Normal(loc, scale).to_event(1))
                if t + 1 < num_steps:
                    state = model.transition(x[:, t], z_t, state)


__getattr__ = module_getattr(__name__, {"VRNNEncoder": lambda: VRNNGuide})
