"""Amortized posteriors (Pyro guide functions), importable as ``pyro_aevb.guides``."""

from .gaussian import DiagonalNormalEncoder

__all__ = ["DiagonalNormalEncoder"]
