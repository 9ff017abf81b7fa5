"""The options every ``pyro-aevb fit PAIR`` takes, whatever the pair: data, objective,
training, device (data-parallel flags included) and run directory."""

from __future__ import annotations

from ..data import DATASETS, TRANSFORMS
from ..objectives.flags import add_objective_arguments
from ..training.distributed import ACCELERATORS, INSTALL_HINT, LOGGERS, PRECISIONS, STRATEGIES
from ..training.optim import LR_SCHEDULES, OPTIMIZERS


def add_fit_options(parser) -> None:
    """Add the options every ``fit PAIR`` takes, whatever the pair: data, objective,
    optimization, schedule, evaluation, device and run directory. One place, so that a
    flag added here is a flag of every pair."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), help="default: the pair's")
    data.add_argument("--data-dir", help="folder with IDX files (fashion-mnist, mnist)")
    data.add_argument(
        "--binarize",
        dest="transform",
        choices=sorted(TRANSFORMS),
        help="dynamic, fixed, threshold, dequantize (continuous), none; default: the pair's",
    )
    data.add_argument("--max-train", type=int, help="use only the first N training points")
    data.add_argument("--max-test", type=int, help="use only the first N test points")
    _add_objective_options(parser.add_argument_group("objective"))
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--lr", type=float, help="learning rate")
    training.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="torch optimizer (adam)")
    training.add_argument(
        "--lr-schedule", choices=list(LR_SCHEDULES), help="learning-rate schedule (constant)"
    )
    training.add_argument("--clip-norm", type=float, help="clip the gradient's total norm to this")
    training.add_argument(
        "--clip-value",
        type=float,
        help="clamp each gradient element to [-v, v] (what Pyro's ClippedAdam does; the loss "
        "here is per data point: divide a batch-sum example's value by the batch size)",
    )
    training.add_argument(
        "--em",
        nargs=2,
        type=int,
        metavar=("GUIDE_STEPS", "MODEL_STEPS"),
        help="alternate guide-only (E) and model-only (M) periods of these many steps",
    )
    training.add_argument(
        "--em-rounds",
        type=int,
        help="with --em: stop after this many E/M rounds (default: alternate until --epochs)",
    )
    training.add_argument(
        "--eval-every", type=int, help="write a history row every N steps (default: per epoch)"
    )
    training.add_argument("--patience", type=int, help="early stopping on the test ELBO")
    training.add_argument(
        "--eval-particles",
        dest="log_likelihood_particles",
        type=int,
        help="importance samples for the test log-likelihood (default: the pair's)",
    )
    _add_device_options(parser.add_argument_group("device"))
    _add_run_options(parser.add_argument_group("run"))


def _add_run_options(run) -> None:
    """The run directory, its mode, what is shown and where the settings come from."""
    run.add_argument("--seed", type=int)
    run.add_argument("--out", help="run directory (default runs/MODEL-DATASET-TIME)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--overwrite", action="store_true", help="start afresh over --out")
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (on a terminal) and the per-epoch lines (printed "
        "instead of the bar when stderr is redirected)",
    )
    run.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default 1, measured: torch's own count, one per core, "
        "stalls on a CPU shared with other processes; more may help on an idle machine)",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="read the settings from this JSON file (a run's config.json works); flags "
        "given here override it",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as JSON (config.json's keys, less run_id and "
        "versions) and exit without training",
    )


def _add_objective_options(parser) -> None:
    """The objective and its options (flags generated from the registered specs), and the
    KL weight."""
    add_objective_arguments(parser)  # --objective, --particles and the objectives' options
    parser.add_argument(
        "--kl-weight",
        type=float,
        help="weight of the KL term (objectives whose spec allows a KL weight; default 1)",
    )
    parser.add_argument(
        "--kl-warmup", type=int, help="steps over which the KL weight rises linearly (annealing)"
    )


def _add_device_options(parser) -> None:
    """Where the run computes."""
    parser.add_argument("--device", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--sync-every",
        type=int,
        help="read the loss and the NaN guard back every N steps (default 1; the guard then "
        "runs on the device)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_const",
        const=True,
        help="CUDA only: capture each step as a CUDA graph and replay it (opt-in, unverified)",
    )
    add_distributed_options(parser)


def add_distributed_options(group) -> None:
    """The flags of data-parallel training through Lightning Fabric, each with its help
    text (added to ``group`` itself: argparse shows no help for a group nested in a group).
    Their values reach :func:`~pyro_aevb.fit` through the run's config and are
    validated by :func:`~pyro_aevb.training.distributed.resolve_settings`."""
    hint = f"; needs Lightning Fabric ({INSTALL_HINT})"
    group.add_argument(
        "--devices", type=int, help="processes per machine, one per device (default 1)" + hint
    )
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="auto (default): processes forked from this one; ddp: the command is re-run "
        "per process (Fabric's script launcher)",
    )
    group.add_argument("--num-nodes", type=int, help="machines, each with --devices (default 1)")
    group.add_argument("--accelerator", choices=ACCELERATORS, help="default: from --device")
    group.add_argument(
        "--precision", choices=PRECISIONS, help="32-true (default) or bf16-mixed autocast"
    )
    group.add_argument("--logger", choices=LOGGERS, help="also log history rows (RUN_DIR/logs)")
