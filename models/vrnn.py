r"""The variational recurrent neural network's generative model (Chung et al., 2015)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_aevb.nn import MLP, DiagonalNormalHead, get_likelihood
from pyro_aevb.plate import data_plate

#: the name under which the model's parameters (the LSTM included) are registered with
#: Pyro, by the model and by its guide alike, so that both use one set of parameters
PYRO_NAME = "vrnn"


def latent_site(t: int) -> str:
    """Name of the latent site of step ``t`` (0-based): ``"z_1"`` for ``t = 0``."""
    return f"z_{t + 1}"


def observed_site(t: int) -> str:
    """Name of the observed site of step ``t`` (0-based): ``"x_1"`` for ``t = 0``."""
    return f"x_{t + 1}"


def broadcast_cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dim after broadcasting the batch dims.

    In importance sampling ``z_t`` carries a particle dim on the left, ``(K, B, L)``,
    while ``x_t`` and the initial state are ``(B, ...)``.
    """
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], -1)


@dataclass
class RowByRowGeneration:
    r"""One generation by :meth:`VRNN.generate_rows`, step by step.

    Row ``t`` of ``probs`` is the Bernoulli mean of :math:`x_t` given the sampled past
    :math:`x_{<t}, z_{\le t}`; row ``t`` of ``rows`` is the row drawn from it, which the
    next steps condition on.
    """

    #: :math:`z_t`, shape ``(num, T, L)``
    z: torch.Tensor
    #: :math:`\mathbb E[x_t \mid x_{<t}, z_{\le t}]`, shape ``(num, T, D)``
    probs: torch.Tensor
    #: the sampled rows :math:`x_t`, shape ``(num, T, D)``, values in {0, 1} under the
    #: Bernoulli likelihood
    rows: torch.Tensor


class VRNN(nn.Module):
    r"""Generative model of a sequence :math:`x_1, \ldots, x_T` with one latent
    :math:`z_t \in \mathbb R^L` per step and an LSTM state :math:`(h_t, c_t)` that
    summarizes the past (Chung et al., 2015):

    .. math::

        (h_1, c_1) &= (0, 0), \\
        z_t \mid h_t &\sim \mathcal N\big(\mu_\theta(h_t),
            \operatorname{diag} \sigma^2_\theta(h_t)\big), \\
        x_t \mid h_t, z_t &\sim \textstyle\prod_{d=1}^D
            \mathrm{Bernoulli}\big(p_\theta(h_t, z_t)_d\big), \\
        (h_{t+1}, c_{t+1}) &= \mathrm{LSTM}_\theta\big([x_t, z_t], (h_t, c_t)\big),

    so that :math:`p_\theta(x, z) = \prod_t p_\theta(z_t \mid x_{<t}, z_{<t})
    \, p_\theta(x_t \mid x_{<t}, z_{\le t})`. An image is read as the sequence of its
    rows (``Dataset.rows()``: ``T = 28`` rows of ``D = 28`` binary pixels for MNIST).

    The setting of Yang Zhi-Han, "Training Latent Variable Models with Auto-encoding
    Variational Bayes: A Tutorial", section 5.6: latent dimension ``L = 2`` per step,
    binarized MNIST, minibatches of 100 and Adam at a learning rate of 1e-3. The paper
    does not give the sizes of the networks; ``rnn_dim = 256`` and one hidden layer of
    256 ReLU units in the prior and the decoder are our choice.

    :param x_dim: features per step ``D`` (the image width: 28 for MNIST, 8 for the
        8x8 digits).
    :param z_dim: latent dimension per step ``L``.
    :param rnn_dim: size of the LSTM's hidden and cell states ``H``.
    :param hidden: hidden layer sizes of the prior network :math:`h_t \mapsto (\mu,
        \sigma)` and of the decoder :math:`(h_t, z_t) \mapsto p`.
    :param num_steps: length of generated sequences when :meth:`generate` is not told
        (the image height).
    :param likelihood: ``"bernoulli"`` (binary data, the paper's) or
        ``"continuous_bernoulli"``; see :data:`pyro_aevb.nn.LIKELIHOODS`.

    Sites, inside the data plate, for steps ``t = 1..T``: latent ``z_t`` of shape
    ``(B, L)`` and observed ``x_t`` of shape ``(B, D)``, written with ``pyro.markov``.
    Pair it with :class:`pyro_aevb.guides.vrnn.VRNNGuide`, which shares its LSTM.
    """

    def __init__(
        self,
        x_dim: int = 28,
        z_dim: int = 2,
        rnn_dim: int = 256,
        hidden: Sequence[int] = (256,),
        num_steps: int = 28,
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if min(x_dim, z_dim, rnn_dim, num_steps) < 1:
            raise ValueError(
                "VRNN needs positive x_dim, z_dim, rnn_dim and num_steps, got "
                f"{x_dim}, {z_dim}, {rnn_dim}, {num_steps}"
            )
        self.x_dim, self.z_dim, self.rnn_dim, self.num_steps = x_dim, z_dim, rnn_dim, num_steps
        self.likelihood_name = likelihood
        self.likelihood = get_likelihood(likelihood)
        self.rnn = nn.LSTMCell(x_dim + z_dim, rnn_dim)
        hidden = tuple(hidden)
        self.prior_trunk = (
            MLP([rnn_dim, *hidden], activate_output=True) if hidden else nn.Identity()
        )
        self.prior_head = DiagonalNormalHead(hidden[-1] if hidden else rnn_dim, z_dim)
        self.decoder = MLP([rnn_dim + z_dim, *hidden, x_dim])

    # -- the pieces of one step, shared with the guide ------------------------------

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`(h_1, c_1) = (0, 0)`, each ``(B, H)`` for a batch ``x`` ``(B, T, D)``."""
        zeros = x.new_zeros(x.shape[0], self.rnn_dim)
        return zeros, zeros

    def prior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(loc, scale)`` of :math:`p(z_t \mid h_t)`, each ``(..., L)``."""
        return self.prior_head(self.prior_trunk(h))

    def logits(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r"""Logits of :math:`p(x_t \mid h_t, z_t)`, ``(..., D)``, batch dims broadcast."""
        return self.decoder(broadcast_cat(h, z))

    def transition(
        self, x_t: torch.Tensor, z_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(h_{t+1}, c_{t+1}) = \mathrm{LSTM}([x_t, z_t], (h_t, c_t))`.

        Any leading batch dims, e.g. ``z_t`` ``(K, B, L)`` with ``x_t`` ``(B, D)`` and a
        state ``(B, H)``, are broadcast, flattened for ``nn.LSTMCell`` (which only takes
        ``(N, features)``) and restored: the new state is ``(K, B, H)``.
        """
        h, c = state
        xz = broadcast_cat(x_t, z_t)
        batch = torch.broadcast_shapes(xz.shape[:-1], h.shape[:-1])
        flat = lambda t: t.expand(*batch, t.shape[-1]).reshape(-1, t.shape[-1])
        h, c = self.rnn(flat(xz), (flat(h), flat(c)))
        return h.reshape(*batch, self.rnn_dim), c.reshape(*batch, self.rnn_dim)

    # -- the Pyro program -----------------------------------------------------------

    def check_input(
        self, x: torch.Tensor, mask: torch.Tensor | None, owner: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | bool]:
        """Validate a batch and return ``(x, step_mask)``.

        ``x`` comes back with its padded steps set to 0, so that padding of any value
        stays in the likelihood's support and cannot send NaN through the masked
        steps' gradients; ``step_mask`` is ``mask`` or ``True`` (every step is real).

        :raises ValueError: unless ``x`` is a float tensor ``(B, T, D)`` with
            ``D = x_dim`` and ``mask`` is ``None`` or a bool ``(B, T)`` prefix mask.
        """
        owner = owner or type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{owner} expects x as a floating-point tensor, got {what}")
        if x.dim() != 3:
            hint = (
                "read images as sequences of rows with Dataset.rows()"
                if x.dim() == 2
                else "give one sequence of feature vectors per data point"
            )
            raise ValueError(
                f"{owner} expects x of shape (batch, steps, {self.x_dim}), got "
                f"{tuple(x.shape)}; {hint}"
            )
        if x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{owner} expects {self.x_dim} features per step, got x of shape "
                f"{tuple(x.shape)}; build the VRNN with x_dim={x.shape[-1]} for this data"
            )
        if mask is None:
            return x, True
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"{owner} expects mask as a bool tensor (True for real steps), got {what}"
            )
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"{owner} expects mask of shape (batch, steps) = {tuple(x.shape[:2])}, "
                f"got {tuple(mask.shape)}"
            )
        # A real step after a padded one would read padding through the recurrence.
        holes = (mask[:, 1:] & ~mask[:, :-1]).any(-1)
        if bool(holes.any()):
            rows = holes.nonzero().flatten().tolist()
            raise ValueError(
                f"{owner} needs prefix masks (True for the first steps, then False), but "
                f"rows {rows[:5]}{' ...' if len(rows) > 5 else ''} have a real step after "
                "a padded one; put each sequence at the start of its row"
            )
        return x.masked_fill(~mask.unsqueeze(-1), 0.0), mask

    #: the name under which the model registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = PYRO_NAME

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Score a batch ``x`` of shape ``(B, T, D)``.

        :param mask: optional bool ``(B, T)``, True for real steps, a prefix of each
            row; the sites of padded steps are masked out and contribute nothing.
        """
        x, mask = self.check_input(x, mask)
        pyro.module(self.pyro_name, self)
        num_steps = x.shape[1]
        state = self.initial_state(x)
        with data_plate(x):
            for t in pyro.markov(range(num_steps)):
                step_mask = mask if isinstance(mask, bool) else mask[:, t]
                with poutine.mask(mask=step_mask):
                    loc, scale = self.prior(state[0])
                    z_t = pyro.sample(latent_site(t), dist.Normal(loc, scale).to_event(1))
                    logits = self.logits(state[0], z_t)
                    pyro.sample(observed_site(t), self.likelihood(logits), obs=x[:, t])
                if t + 1 < num_steps:
                    state = self.transition(x[:, t], z_t, state)

    # -- generation -----------------------------------------------------------------

    @torch.no_grad()
    def generate_rows(self, num: int = 1, steps: int | None = None) -> RowByRowGeneration:
        r"""Ancestral sampling, one row at a time: for ``t = 1..T`` draw
        :math:`z_t \sim p(z_t \mid h_t)`, then :math:`x_t \sim p(x_t \mid h_t, z_t)`,
        and feed both into the LSTM. Returns every step's latent, Bernoulli mean and
        sampled row (the record behind a row-by-row generation figure).

        :param num: sequences to generate.
        :param steps: their length ``T`` (default ``num_steps``).
        """
        steps = self.num_steps if steps is None else int(steps)
        if num < 1 or steps < 1:
            raise ValueError(f"generate needs num >= 1 and steps >= 1, got {num}, {steps}")
        ref = next(self.parameters())
        state = self.initial_state(ref.new_zeros(num, steps, self.x_dim))
        zs, probs, rows = [], [], []
        for t in range(steps):
            loc, scale = self.prior(state[0])
            z_t = dist.Normal(loc, scale).sample()
            likelihood = self.likelihood(self.logits(state[0], z_t))
            x_t = likelihood.sample()
            zs.append(z_t)
            probs.append(likelihood.mean)
            rows.append(x_t)
            if t + 1 < steps:
                state = self.transition(x_t, z_t, state)
        stack = lambda xs: torch.stack(xs, 1)
        return RowByRowGeneration(z=stack(zs), probs=stack(probs), rows=stack(rows))

    @torch.no_grad()
    def generate(self, num: int, steps: int | None = None, mean: bool = True) -> torch.Tensor:
        r"""``num`` sequences of ``steps`` rows (default ``num_steps``), ``(num, T, D)``,
        generated row by row from the prior.

        :param mean: return each row's mean given the sampled past
            :math:`x_{<t}, z_{\le t}` (values in [0, 1], the default, as every model's
            ``generate``) instead of the sampled rows (values in {0, 1} under the
            Bernoulli likelihood).
        """
        record = self.generate_rows(num, steps)
        return record.probs if mean else record.rows
