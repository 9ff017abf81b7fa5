"""Issue 21 #7: the command line's torch intra-op threads default to one.

Torch's own default (one thread per core) stalls on a CPU that other processes share:
every multi-threaded operation waits for its slowest, descheduled thread. Measured for the
quick start's step (``python -m bench.threads``, bench/README.md): a median of 26 ms per
step with one thread against 637 ms with torch's default on this project's shared 2-core
machine, 257 ms against 1528 ms with one more CPU-bound process. The default is therefore
1, stated in ``--help``.
"""

import pytest
import torch

from pyro_aevb.cli import main
from pyro_aevb.cli.parser import build_parser


@pytest.mark.parametrize("argv", [["fit", "vae"], ["evaluate", "RUN"], ["bdmc", "RUN"]])
def test_fit_evaluate_and_bdmc_default_to_one_thread(argv):
    assert build_parser().parse_args(argv).threads == 1
    assert build_parser().parse_args([*argv, "--threads", "2"]).threads == 2


def test_the_help_states_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "vae", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads THREADS torch intra-op threads (default 1," in text


def test_a_command_without_threads_runs_with_one_thread_and_restores_the_count():
    from pyro_aevb.cli.commands import _threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _threads(build_parser().parse_args(["fit", "vae"])):
            inside = torch.get_num_threads()
        assert inside == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
