"""What a resume may change (the learning rate, the patience, more epochs) and what it may
not; a setting spelled as its default is no change; the divergence message's advice, to
continue with a lower learning rate, works when followed."""

import json
import shlex

import pytest
import torch

from pyro_aevb import checkpoint as ckpt
from pyro_aevb import fit
from pyro_aevb.cli import main

from .conftest import tiny_vae

TINY = [
    "--dataset", "digits", "--hidden", "8", "--latent-dim", "2", "--max-train", "50",
    "--max-test", "20", "--batch-size", "25", "--eval-particles", "10", "--no-progress",
]  # fmt: skip


def test_a_resumed_fit_may_lower_the_learning_rate_and_trains_with_it(digits, tmp_path):
    train, test = digits
    run = tmp_path / "run"
    model, guide = tiny_vae()
    fit(model, guide, train, test, epochs=1, lr=1e-3, run_dir=run, transform="dynamic")
    model, guide = tiny_vae()
    fit(model, guide, train, test, epochs=2, lr=1e-4, run_dir=run, resume=True, transform="dynamic")
    state = torch.load(run / ckpt.CHECKPOINT_NAME, weights_only=True)
    groups = state["step"]["optimizer"]["param_groups"]
    assert groups and all(group["lr"] == pytest.approx(1e-4) for group in groups)
    assert state["epoch"] == 2


@pytest.mark.parametrize("option, value", [("seed", 1), ("objective", "meanfield")])
def test_a_resume_still_refuses_what_defines_the_run(digits, tmp_path, option, value):
    train, test = digits
    run = tmp_path / "run"
    fit(*tiny_vae(), train, test, epochs=1, run_dir=run, transform="dynamic")
    with pytest.raises(ValueError, match=f"cannot resume with different settings.*{option}"):
        fit(
            *tiny_vae(),
            train,
            test,
            epochs=2,
            run_dir=run,
            resume=True,
            transform="dynamic",
            **{option: value},
        )


def test_the_cli_resumes_with_a_default_spelled_out_and_with_a_lower_lr(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    resume = ["fit", "vae", *TINY, "--out", str(out), "--resume"]
    assert main([*resume, "--epochs", "2", "--optimizer", "adam"]) == 0, capsys.readouterr().err
    assert main([*resume, "--epochs", "3", "--lr", "1e-4"]) == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["lr"] == pytest.approx(1e-4)
    assert main([*resume, "--epochs", "4", "--seed", "7"]) == 2  # the run is another one
    assert "seed" in capsys.readouterr().err


def test_the_divergence_advice_to_resume_with_a_lower_lr_works(tmp_path, capsys):
    out = tmp_path / "run"
    fa = ["fit", "fa", "--epochs", "1", "--no-progress", "--max-train", "200", "--max-test",
          "50", "--out", str(out)]  # fmt: skip
    assert main(fa) == 0
    capsys.readouterr()
    diverging = [*fa[:2], "--epochs", "2", *fa[4:], "--resume", "--lr", "1e6"]
    assert main(diverging) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "lower learning rate" in err, err
    start = err.index("(pyro-aevb ") + 1
    words = shlex.split(err[start : err.index(")", start)])
    assert words[0] == "pyro-aevb" and "--resume" in words and words[-2:] == ["--lr", "100000"]
    # the command as printed is taken (it trains again, from the last good checkpoint: at a
    # tenth of 1e6 factor analysis still diverges, and the message says so again)
    assert main(words[1:]) == 2
    again = capsys.readouterr().err
    assert "cannot resume" not in again and "training diverged" in again, again
    # and with a rate that suits the model, the same command finishes the run
    assert main([*words[1:-1], "1e-3"]) == 0, capsys.readouterr().err
    assert torch.load(out / ckpt.CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
