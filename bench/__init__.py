"""Benchmarks of pyro-aevb against plain PyTorch and stock Pyro (run from the repository
root as modules: ``python -m bench.step_speed``; see ``bench/README.md``)."""
