"""The guide of a model without latent sites (a flow density model, say).

With nothing to infer, :math:`q` is empty and the ELBO is :math:`\\log p(x)` itself:
Pyro's ``Trace_ELBO`` then computes the model's exact log-likelihood, and every
estimate of it is exact (no particles, no gap).
"""

from __future__ import annotations

from torch import nn


class NoLatentGuide(nn.Module):
    """A guide that samples nothing; accepts the model's arguments and ignores them."""

    def forward(self, *args, **kwargs) -> None:
        return None


__all__ = ["NoLatentGuide"]
