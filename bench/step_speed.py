"""Speed of pyro-aevb's training step, and of ``fit``, against plain PyTorch and stock Pyro.

Two measurements (issue 15, "Measure"):

* **The step.** On one fixed binarized batch, the library's step (a
  :class:`pyro_aevb.TrainingStep` set up exactly as ``fit`` sets it up,
  :mod:`bench.library_step`) against (a) the same model written in plain PyTorch as a
  user writes it, with the default ``torch.optim.Adam``; (b) the same with
  ``Adam(fused=True)``; (c) a stock ``pyro.infer.SVI.step`` with ``pyro.optim.Adam`` on the
  same Pyro pair. All four start from identical weights (the plain modules receive the
  pair's ``state_dict``, checked equal). After a warm-up, ``--rounds`` rounds rotate the
  order of the four; the report gives median ms per step and the median of the per-round
  ratios.
* **fit.** A short ``pyro_aevb.fit`` run (``--fit-epochs`` on the bundled MNIST subset)
  against plain loops (a) and (b) over the same epochs and the same batches (``fit``'s
  seeded stream: per epoch the binarization, then the permutation), interleaved
  ``--fit-repeats`` times: seconds per step from ``fit``'s history (``train_seconds`` of
  epochs 2 on) and from the plain loop timed the same way, and the extra cost of the first
  epoch (its seconds minus the later epochs' median).

Cases: the default VAE 784-500-500-20 (``pyro_aevb.pairs.VAE_PAIR``) with ``elbo``
(``Trace_ELBO``), ``meanfield`` (``TraceMeanField_ELBO``; plain: the closed-form KL),
``iwae5`` (IWAE, K = 5) and ``dreg5`` (IWAE with the DReG guide gradient, K = 5), and the
Gaussian-mixture VAE with its cluster summed out (``gmvae``, ``TraceEnum_ELBO``; plain:
``bench/plain_gmvae.py``). The plain losses are in ``bench/plain_vae.py``; ``--check`` tests
them against the library's (same loss and gradients under the same noise) and exits.

Run from the repository root: ``python -m bench.step_speed --quick`` (a smoke run) or
``python -m bench.step_speed`` (see ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch

import pyro_aevb
from bench import plain_gmvae, plain_vae
from bench.environment import environment
from bench.library_step import library_step_runner
from bench.report import (
    command_line,
    load_average,
    produced_by,
    result_paths,
    warm_up_optimizers,
    write_results,
)
from bench.timing import time_step_variants
from pyro_aevb.data import get_transform, load_mnist_subset
from pyro_aevb.objectives import make_objective
from pyro_aevb.pairs import GMVAE_PAIR, VAE_PAIR
from pyro_aevb.plate import full_data_size

#: case -> (pair, objective, particles); the plain loss is chosen in :func:`plain_loss`
CASES = {
    "elbo": (VAE_PAIR, "elbo", 1),
    "meanfield": (VAE_PAIR, "meanfield", 1),
    "iwae5": (VAE_PAIR, "iwae", 5),
    "dreg5": (VAE_PAIR, "dreg", 5),
    "gmvae": (GMVAE_PAIR, "enum", 1),
}
#: the issue's targets on fit's seconds per step, batch 100: (variant, bound)
TARGETS = {
    "elbo": (("plain", 1.00), ("plain_fused", 1.10)),
    "meanfield": (("plain", 1.00), ("plain_fused", 1.10)),
    "iwae5": (("plain", 1.05),),
    "dreg5": (("plain", 1.05),),
    "gmvae": (("plain", 1.05),),
}
VARIANTS = ("ours", "plain", "plain_fused", "pyro_svi")
LABELS = {
    "ours": "ours (`pyro_aevb.TrainingStep`, as `fit` builds it)",
    "plain": "(a) plain PyTorch, `torch.optim.Adam`",
    "plain_fused": "(b) plain PyTorch, `Adam(fused=True)`",
    "pyro_svi": "(c) stock `pyro.infer.SVI.step`, `pyro.optim.Adam`",
}
QUICK = {
    "warmup": 1,
    "rounds": 2,
    "round_seconds": 0.02,
    "fit_epochs": 2,
    "fit_repeats": 1,
    "fit_points": 400,
    "cases": ["elbo", "dreg5", "gmvae"],
    "threads": [1],
    "batch_sizes": [100],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--gmvae-batch-sizes",
        type=int,
        nargs="+",
        default=[100],
        help="batch sizes of the gmvae step timing (its step costs C = 10 decoder passes)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (median taken)")
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=0.4,
        help="about this many seconds per variant and round (sets the steps per round)",
    )
    parser.add_argument(
        "--fit-cases",
        nargs="*",
        choices=list(CASES),
        default=None,
        help="cases of the fit measurement (default: --cases; none to skip)",
    )
    parser.add_argument(
        "--fit-threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts of the fit measurement (default: --threads)",
    )
    parser.add_argument("--fit-epochs", type=int, default=3)
    parser.add_argument("--fit-repeats", type=int, default=3, help="interleaved fit/plain runs")
    parser.add_argument(
        "--fit-points", type=int, default=None, help="train on the first N points (default all)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--check", action="store_true", help="only check the plain losses")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument(
        "--out",
        default=None,
        help="output stem, writes STEM.json and STEM.md (default bench/results/step_speed, "
        "with _quick for --quick and _DEVICE for a device other than cpu)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():  # only what the user left at its default
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.fit_cases is None:
        args.fit_cases = list(args.cases)
    if args.fit_threads is None:
        args.fit_threads = list(args.threads)
    if args.fit_epochs < 2:
        parser.error("--fit-epochs must be at least 2 (epochs 2 on are the steady state)")
    if args.out is None:
        device = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
        args.out = "bench/results/step_speed" + device + ("_quick" if args.quick else "")
    for name in ("threads", "fit_threads", "batch_sizes", "gmvae_batch_sizes"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


# -- building the implementations ----------------------------------------------------


def build_pair(pair, train, seed: int = 0):
    """The library's pair (model, guide) for ``train``, initialized from ``seed``."""
    options = dict(pair.options)
    transform = get_transform(pair.training["transform"])
    options["likelihood"] = options["likelihood"] or transform.likelihood
    torch.manual_seed(seed)
    return pair.build(train, **options)


def build_plain(pair, model, guide, device) -> tuple[torch.nn.Module, ...]:
    """The plain modules of ``pair``, holding exactly the weights of ``model`` and ``guide``.

    The GMVAE's plain modules carry the library's parameter names (a ``state_dict`` copy);
    the VAE's are named differently but built in the same order with the same shapes, so
    the parameters are copied in order. Either way the copy is checked value by value.
    """
    opts = pair.options
    if pair is GMVAE_PAIR:
        plain_model, encoder = plain_gmvae.build_plain_gmvae(
            model.x_dim, opts["num_clusters"], opts["z_dim"], opts["hidden"]
        )
        plain_model.load_state_dict(model.state_dict())
        encoder.load_state_dict(guide.state_dict())
        modules = (plain_model, encoder)
    else:
        encoder, decoder = plain_vae.build_plain_vae(model.x_dim, opts["z_dim"], opts["hidden"])
        ours = [*model.parameters(), *guide.parameters()]
        plain = [*decoder.parameters(), *encoder.parameters()]
        if [p.shape for p in ours] != [p.shape for p in plain]:
            raise RuntimeError("the plain VAE's parameters do not match the pair's in shape")
        with torch.no_grad():
            for a, b in zip(ours, plain, strict=True):
                b.copy_(a)
        modules = (encoder, decoder)
    modules = tuple(m.to(device) for m in modules)
    ours = [p for m in (model, guide) for p in m.parameters()]
    plain = [p for m in modules for p in m.parameters()]
    if pair is not GMVAE_PAIR:  # plain order: decoder last; compare as built
        plain = [*modules[1].parameters(), *modules[0].parameters()]
    if not all(torch.equal(a, b) for a, b in zip(ours, plain, strict=True)):
        raise RuntimeError("the plain implementation does not start from the pair's weights")
    return modules


def plain_loss(case: str, modules) -> Callable[[torch.Tensor], torch.Tensor]:
    """``loss(x_batch)`` of the plain implementation of ``case`` (nats per data point)."""
    _, _, particles = CASES[case]
    a, b = modules
    if case == "elbo":
        return lambda x: plain_vae.negative_elbo(a, b, x)
    if case == "meanfield":
        return lambda x: plain_vae.negative_elbo_analytic_kl(a, b, x)
    if case == "iwae5":
        return lambda x: plain_vae.negative_iwae(a, b, x, particles)
    if case == "dreg5":
        return lambda x: plain_vae.negative_iwae_dreg(a, b, x, particles)
    return lambda x: plain_gmvae.negative_elbo(a, b, x)


def stock_objective(case: str):
    """The objective a Pyro user hands ``SVI``: the library's for the importance-weighted
    cases (Pyro has none that forms the weights per data point), Pyro's otherwise."""
    _, objective, particles = CASES[case]
    if case == "gmvae":
        return pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    if case == "elbo":
        return pyro.infer.Trace_ELBO()
    if case == "meanfield":
        return pyro.infer.TraceMeanField_ELBO()
    return make_objective(objective, particles)


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def binarized_batch(train, batch_size: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.bernoulli(train.x[:batch_size], generator=generator).to(device)


# -- the step --------------------------------------------------------------------------


def step_runners(case: str, train, batch_size: int, device) -> tuple[dict, dict]:
    """Runners ``name -> run(n)`` of the four variants on one batch, and set-up facts."""
    pair, objective, particles = CASES[case]
    lr = pair.training["lr"]
    n_train = len(train)
    x = binarized_batch(train, batch_size, device)
    model, guide = build_pair(pair, train)
    svi_model, svi_guide = copy.deepcopy(model), copy.deepcopy(guide)
    for m in (model, guide, svi_model, svi_guide):
        m.to(device)
    plain_modules = build_plain(pair, model, guide, device)
    fused_modules = tuple(copy.deepcopy(m) for m in plain_modules)

    ours_run, step = library_step_runner(
        model, guide, {"x": x}, n_train, objective, particles, lr=lr
    )

    def plain_runner(modules, fused: bool):
        params = [p for m in modules for p in m.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr, **({"fused": True} if fused else {}))
        plain_step = plain_vae.make_loss_step(plain_loss(case, modules), optimizer)

        def run(n: int) -> None:
            for _ in range(n):
                plain_step(x)

        return run

    store = pyro.get_param_store()
    svi = pyro.infer.SVI(svi_model, svi_guide, pyro.optim.Adam({"lr": lr}), stock_objective(case))
    svi_state: dict = {"params": {}, "constraints": {}}

    def svi_run(n: int) -> None:
        with store.scope(svi_state), full_data_size(n_train):
            for _ in range(n):
                svi.step(x=x)

    runners = {
        "ours": ours_run,
        "plain": plain_runner(plain_modules, fused=False),
        "plain_fused": plain_runner(fused_modules, fused=True),
        "pyro_svi": svi_run,
    }
    facts = {
        "ours_optimizer": type(step.optimizer).__name__
        + str({k: v for k, v in step.optimizer.defaults.items() if k in ("fused", "foreach")}),
        "same_initial_weights": True,  # build_plain raises otherwise
    }
    return runners, facts


def time_case(case: str, train, batch_size: int, args, device) -> dict:
    runners, facts = step_runners(case, train, batch_size, device)
    sync = synchronizer(device)
    # steps per round: about --round-seconds of the plain step
    for run in runners.values():
        run(max(1, args.warmup))
    sync()
    t0 = time.perf_counter()
    runners["plain"](2)
    sync()
    per_step = (time.perf_counter() - t0) / 2
    steps = max(1, math.ceil(args.round_seconds / per_step))
    timing = time_step_variants(runners, 0, args.rounds, steps, synchronize=sync)
    return {
        "case": case,
        "batch_size": batch_size,
        "steps_per_round": steps,
        "rounds": args.rounds,
        "warmup_steps": args.warmup + 1,
        **facts,
        **timing,
    }


# -- fit --------------------------------------------------------------------------------


@dataclass
class EpochTimes:
    """Seconds spent in training steps, per epoch."""

    seconds: list[float]
    steps_per_epoch: int

    def per_step_after_first(self) -> float:
        return sum(self.seconds[1:]) / (self.steps_per_epoch * (len(self.seconds) - 1))

    def first_epoch_extra(self) -> float:
        return self.seconds[0] - statistics.median(self.seconds[1:])


def fit_ours(case: str, train, args, device, batch_size=None, **options) -> EpochTimes:
    """``fit`` of ``case`` for ``args.fit_epochs`` (the pair's batch size unless given;
    ``options`` go to ``fit``, e.g. ``sync_every``)."""
    pair, objective, particles = CASES[case]
    settings = pair.training
    batch_size = batch_size or settings["batch_size"]
    model, guide = build_pair(pair, train)
    result = pyro_aevb.fit(
        model,
        guide,
        train,
        None,
        transform=settings["transform"],
        objective=objective,
        num_particles=particles,
        epochs=args.fit_epochs,
        batch_size=batch_size,
        lr=settings["lr"],
        seed=0,
        device=str(device),
        progress=False,
        **options,
    )
    steps = math.ceil(len(train) / batch_size)
    return EpochTimes([row["train_seconds"] for row in result.history], steps)


def fit_plain(case: str, train, args, device, fused: bool) -> EpochTimes:
    """A plain loop over the batches ``fit`` draws: per epoch, with a generator seeded as
    ``fit``'s, the binarization and then the permutation; each step timed as ``fit`` times
    its steps (from taking the batch to the loss read back)."""
    pair = CASES[case][0]
    settings = pair.training
    model, guide = build_pair(pair, train)
    modules = build_plain(pair, model, guide, device)
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=settings["lr"], **({"fused": True} if fused else {}))
    step = plain_vae.make_loss_step(plain_loss(case, modules), optimizer)
    transform = get_transform(settings["transform"])
    batch_size = settings["batch_size"]
    x_all = train.x.to(device)
    n = x_all.shape[0]
    steps = math.ceil(n / batch_size)
    generator = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    sync = synchronizer(device)
    seconds = []
    for _ in range(args.fit_epochs):
        x = transform(x_all, generator, train.levels)
        perm = torch.randperm(n, generator=generator, device=device)
        total = 0.0
        for i in range(steps):
            t0 = time.perf_counter()
            step(x[perm[i * batch_size : (i + 1) * batch_size]])
            sync()
            total += time.perf_counter() - t0
        seconds.append(total)
    return EpochTimes(seconds, steps)


def time_fit(case: str, train, args, device) -> dict:
    """``fit`` against the plain loops, ``--fit-repeats`` interleaved runs (order rotating)."""
    runs = {
        "ours": lambda: fit_ours(case, train, args, device),
        "plain": lambda: fit_plain(case, train, args, device, fused=False),
        "plain_fused": lambda: fit_plain(case, train, args, device, fused=True),
    }
    names = list(runs)
    times: dict[str, list[EpochTimes]] = {name: [] for name in names}
    for r in range(args.fit_repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(runs[name]())
    ms = {n: [1e3 * t.per_step_after_first() for t in ts] for n, ts in times.items()}
    ratios = {
        n: statistics.median(a / b for a, b in zip(ms[n], ms["plain"], strict=True))
        for n in ("ours", "plain_fused")
    }
    ratios_fused = statistics.median(
        a / b for a, b in zip(ms["ours"], ms["plain_fused"], strict=True)
    )
    targets = []
    for variant, bound in TARGETS[case]:
        ratio = ratios["ours"] if variant == "plain" else ratios_fused
        targets.append({"against": variant, "bound": bound, "ratio": ratio, "pass": ratio <= bound})
    return {
        "case": case,
        "epochs": args.fit_epochs,
        "repeats": args.fit_repeats,
        "num_train": len(train),
        "steps_per_epoch": times["ours"][0].steps_per_epoch,
        "ms_per_step_epochs_2_on": ms,
        "ms_per_step_median": {n: statistics.median(v) for n, v in ms.items()},
        "epoch_seconds": {n: [t.seconds for t in ts] for n, ts in times.items()},
        "first_epoch_extra_seconds": {
            n: statistics.median(t.first_epoch_extra() for t in ts) for n, ts in times.items()
        },
        "ratio_ours_over_plain_median_of_runs": ratios["ours"],
        "ratio_ours_over_plain_fused_median_of_runs": ratios_fused,
        "ratio_plain_fused_over_plain_median_of_runs": ratios["plain_fused"],
        "targets": targets,
    }


# -- the check ----------------------------------------------------------------------------


def check_plain_losses(train, device, cases, batch_size: int = 50, tol: float = 1e-5) -> dict:
    """For each VAE case: the plain loss and its gradients equal the library's (the
    objective's ``differentiable_loss`` on the pair, bound as ``fit`` binds it) under the
    same noise, to ``tol`` (relative to the largest gradient entry). The noise is the
    same because both draw ``(K, B, L)`` standard normals first from the same seed."""
    out = {}
    x = binarized_batch(train, batch_size, device)
    store = pyro.get_param_store()
    for case in cases:
        pair, objective, particles = CASES[case]
        model, guide = build_pair(pair, train)
        model.to(device)
        guide.to(device)
        modules = build_plain(pair, model, guide, device)
        with store.scope(), pyro.validation_enabled(True):
            with full_data_size(len(train)):
                summary = pyro_aevb.check_pair(
                    model, guide, {"x": x}, allow_model_enumeration=objective == "enum"
                )
            step = pyro_aevb.TrainingStep(
                model, guide, make_objective(objective, particles), summary, {"x": x}, len(train)
            )
            pyro.set_rng_seed(123)
            ours_loss = step.differentiable_loss({"x": x})
            ours_params = [*model.parameters(), *guide.parameters()]
            ours_grads = torch.autograd.grad(ours_loss, ours_params, allow_unused=True)
        pyro.set_rng_seed(123)
        loss = plain_loss(case, modules)(x)
        if pair is GMVAE_PAIR:
            plain_params = [p for m in modules for p in m.parameters()]
        else:
            plain_params = [*modules[1].parameters(), *modules[0].parameters()]
        plain_grads = torch.autograd.grad(loss, plain_params, allow_unused=True)
        scale = max(float(g.abs().max()) for g in ours_grads if g is not None)
        grad_err = max(
            float((a - b).abs().max()) / scale for a, b in zip(ours_grads, plain_grads, strict=True)
        )
        ours_loss, loss = ours_loss.detach(), loss.detach()
        loss_err = abs(float(ours_loss) - float(loss)) / max(1.0, abs(float(loss)))
        out[case] = {
            "loss_ours": float(ours_loss),
            "loss_plain": float(loss),
            "loss_relative_error": loss_err,
            "gradient_error_relative_to_max": grad_err,
            "pass": loss_err <= tol and grad_err <= tol,
        }
    return out


# -- report -------------------------------------------------------------------------------


def markdown_report(results: dict) -> str:
    env = results["environment"]
    load = results["load_average"]
    lines = [
        "# Training step speed: pyro-aevb against plain PyTorch and stock Pyro",
        "",
        f"{env['date_utc']}; device {results['settings']['device']}; CPU {env['cpu_model']} "
        f"({env['cpu_count']} cores); torch {env['torch']}, pyro {env['pyro']}, pyro-aevb "
        f"{env['pyro_aevb']} (commit {str(env['commit'])[:10]}"
        f"{', library tree modified' if env['library_tree_dirty'] else ''}).",
        "",
        f"**The machine is shared** with other jobs: load average (1, 5, 15 min) "
        f"{_load(load['start'])} at the start, {_load(load['end'])} at the end; absolute "
        "times move with it, the per-round ratios much less.",
        "",
    ]
    if not results.get("complete", True):
        lines += ["**Incomplete**: the run stopped before its last case.", ""]
    if results.get("fit"):
        lines += [
            f"## `fit` against plain loops (batch 100, {results['fit'][0]['epochs']} epochs, "
            "ms per step of epochs 2 on)",
            "",
            "| threads | case | fit | (a) plain | (b) fused | fit/(a) | fit/(b) | targets "
            "| 1st epoch extra s: fit / plain |",
            "|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in results["fit"]:
            ms = r["ms_per_step_median"]
            targets = ", ".join(
                f"{'(a)' if t['against'] == 'plain' else '(b)'} <= {t['bound']:.2f}: "
                f"{'PASS' if t['pass'] else 'FAIL'}"
                for t in r["targets"]
            )
            extra = r["first_epoch_extra_seconds"]
            lines.append(
                f"| {r['threads']} | {r['case']} | {ms['ours']:.2f} | {ms['plain']:.2f} "
                f"| {ms['plain_fused']:.2f} | {r['ratio_ours_over_plain_median_of_runs']:.2f} "
                f"| {r['ratio_ours_over_plain_fused_median_of_runs']:.2f} | {targets} "
                f"| {extra['ours']:.2f} / {extra['plain']:.2f} |"
            )
        lines += [
            "",
            "Ratios: median over the interleaved runs of each run's ratio. First-epoch extra: "
            "epoch 1's step seconds minus the median of the later epochs'.",
            "",
        ]
    if results.get("steps"):
        lines += [
            "## One step on a fixed batch (ms per step, median over rounds)",
            "",
            "| threads | batch | case | ours | (a) plain | (b) fused | (c) SVI | ours/(a) "
            "| ours/(b) | (c)/(a) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["steps"]:
            ms, paired = r["ms_per_step_median"], r["ratio_over_plain_median_of_rounds"]
            ours_fused = statistics.median(
                a / b
                for a, b in zip(
                    r["ms_per_step_per_round"]["ours"],
                    r["ms_per_step_per_round"]["plain_fused"],
                    strict=True,
                )
            )
            lines.append(
                f"| {r['threads']} | {r['batch_size']} | {r['case']} | {ms['ours']:.2f} "
                f"| {ms['plain']:.2f} | {ms['plain_fused']:.2f} | {ms['pyro_svi']:.2f} "
                f"| {paired['ours']:.2f} | {ours_fused:.2f} | {paired['pyro_svi']:.2f} |"
            )
        lines += [
            "",
            "Ratios: median of the per-round ratios (the variants of a round ran seconds "
            "apart, in rotating order).",
            "",
        ]
    lines += produced_by(results["command"])
    return "\n".join(lines)


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pyro_aevb.device.resolve_device(args.device)
    command = command_line("step_speed", argv)
    load_start = load_average()
    started = time.perf_counter()
    warm_up_optimizers()
    train, _ = load_mnist_subset()
    train = train.flat()

    vae_cases = [c for c in args.cases if c != "gmvae"]
    checks = check_plain_losses(train, device, vae_cases) if vae_cases else {}
    for case, c in checks.items():
        print(
            f"check {case}: loss ours {c['loss_ours']:.6f} plain {c['loss_plain']:.6f}, "
            f"gradient error {c['gradient_error_relative_to_max']:.1e}: "
            f"{'PASS' if c['pass'] else 'FAIL'}",
            flush=True,
        )
    if args.check:
        failed = [case for case, c in checks.items() if not c["pass"]]
        if failed:
            raise SystemExit(f"the plain losses of {failed} differ from the library's")
        return {"checks": checks}

    results: dict = {
        "command": command,
        "settings": {
            k: getattr(args, k)
            for k in (
                "cases",
                "threads",
                "batch_sizes",
                "gmvae_batch_sizes",
                "warmup",
                "rounds",
                "round_seconds",
                "fit_cases",
                "fit_epochs",
                "fit_repeats",
                "fit_points",
                "device",
                "quick",
            )
        },
        "checks": checks,
        "steps": [],
        "fit": [],
    }
    fit_train = train if args.fit_points is None else train.subset(range(args.fit_points))
    json_path, md_path = result_paths(args.out)

    def save(complete: bool) -> None:
        """Rewritten after every case, so an interrupted run keeps what it measured."""
        results["complete"] = complete
        results["environment"] = environment(args.threads)
        results["load_average"] = {"start": list(load_start), "end": list(load_average())}
        results["wall_seconds"] = time.perf_counter() - started
        write_results(results, args.out, markdown_report(results))

    # fit first: the targets are on it, and a run cut short keeps them
    for threads in args.fit_threads:
        torch.set_num_threads(threads)
        for case in args.fit_cases:
            r = time_fit(case, fit_train, args, device)
            r["threads"] = threads
            results["fit"].append(r)
            save(False)
            ms = r["ms_per_step_median"]
            print(
                f"fit {threads}t {case}: {ms['ours']:.2f} ms/step, plain {ms['plain']:.2f}, "
                f"fused {ms['plain_fused']:.2f}; fit/plain "
                f"{r['ratio_ours_over_plain_median_of_runs']:.2f}, fit/fused "
                f"{r['ratio_ours_over_plain_fused_median_of_runs']:.2f}",
                flush=True,
            )
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case in args.cases:
            sizes = args.gmvae_batch_sizes if case == "gmvae" else args.batch_sizes
            for batch_size in sizes:
                r = time_case(case, train, batch_size, args, device)
                r["threads"] = threads
                results["steps"].append(r)
                save(False)
                ms, paired = r["ms_per_step_median"], r["ratio_over_plain_median_of_rounds"]
                print(
                    f"step {threads}t b{batch_size} {case}: ours {ms['ours']:.2f} ms, plain "
                    f"{ms['plain']:.2f}, fused {ms['plain_fused']:.2f}, svi "
                    f"{ms['pyro_svi']:.2f}; ours/plain {paired['ours']:.2f}",
                    flush=True,
                )
    save(True)
    print(f"wrote {json_path} and {md_path} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
