"""Deprecated location of the AIS transition kernel, now :mod:`pyro_aevb.ais.kernel`: the
names import from here with a :class:`FutureWarning` naming their new module."""

from __future__ import annotations

from .deprecation import module_getattr


def _kernel(name: str):
    def resolve():
        from .ais import kernel

        return getattr(kernel, name)

    return resolve


__getattr__ = module_getattr(
    __name__, {name: _kernel(name) for name in ("AnnealedPoint", "hmc_transition")}
)
