"""Generative models (Pyro model functions), importable as ``pyro_aevb.models``."""

from .vae import VAE

__all__ = ["VAE"]
