"""The command line end to end on tiny settings."""

import json
import shutil
import subprocess

import pytest

from pyro_aevb.cli import main

TINY = [
    "--dataset",
    "digits",
    "--epochs",
    "2",
    "--hidden",
    "32",
    "--latent-dim",
    "4",
    "--max-train",
    "300",
    "--max-test",
    "100",
    "--eval-particles",
    "100",
    "--no-progress",
]
FILES = {
    "config.json",
    "history.csv",
    "metrics.json",
    "checkpoint.pt",
    "learning_curve.png",
    "samples.png",
    "reconstructions.png",
}


def test_fit_writes_every_output_and_evaluate_recomputes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--out", str(out)]) == 0
    assert FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_elbo", "test_log_likelihood", "log_likelihood_particles", "train_seconds"):
        assert key in metrics
    assert metrics["log_likelihood_particles"] == 100
    assert metrics["test_elbo"] <= metrics["test_log_likelihood"] + 3 * metrics["test_elbo_se"]
    printed = capsys.readouterr().out
    assert "test log-likelihood" in printed and str(out) in printed
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,step,train_elbo,test_elbo") and len(history) == 3
    # fit's last test ELBO and evaluate's use the same seed and batches: the same number.
    assert float(history[-1].split(",")[3]) == pytest.approx(metrics["test_elbo"], abs=1e-9)

    assert main(["evaluate", str(out), "--particles", "200"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["log_likelihood_particles"] == 200
    assert again["test_elbo"] == pytest.approx(metrics["test_elbo"], abs=1e-6)  # same parameters

    # A finished run resumes to itself; an existing run is not overwritten by accident.
    assert main(["fit", "vae", *TINY, "--out", str(out), "--resume"]) == 0
    assert main(["fit", "vae", *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_runs_with_the_same_seed_are_identical(tmp_path):
    """Initial weights, shuffling, binarization and evaluation all follow --seed."""
    runs = []
    for name in ("a", "b"):
        assert (
            main(
                ["fit", "vae", *TINY, "--epochs", "1", "--seed", "3", "--out", str(tmp_path / name)]
            )
            == 0
        )
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    for key in ("test_elbo", "test_log_likelihood", "final_train_elbo"):
        assert runs[0][key] == runs[1][key], key


def test_continuous_data_and_other_objectives(tmp_path):
    out = tmp_path / "run"
    args = [
        "fit",
        "vae",
        *TINY,
        "--binarize",
        "dequantize",
        "--objective",
        "renyi",
        "--particles",
        "3",
        "--alpha",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"]["likelihood"] == "continuous_bernoulli"
    assert config["objective_options"] == {"alpha": 0.5}


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "vae", "--device", "cuda"], "no CUDA device"),
        (["fit", "vae", "--objective", "renyi", "--particles", "1"], "renyi needs"),
        (["evaluate", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_errors_exit_with_a_message(args, message, capsys, tmp_path):
    if "cuda" in args:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
    assert main(args + (["--out", str(tmp_path / "r")] if args[0] == "fit" else [])) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_unknown_names_are_rejected_by_the_parser(capsys):
    for args in (
        ["fit", "gan"],
        ["fit", "vae", "--dataset", "cifar"],
        ["fit", "vae", "--objective", "elbow"],
        ["fit", "vae", "--binarize", "yes"],
    ):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed(capsys):
    exe = shutil.which("pyro-aevb")
    assert exe is not None, "pip install the package to get the pyro-aevb command"
    result = subprocess.run([exe, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "vrnn" in result.stdout  # the pairs, with a line each
    # the script runs main (above); a pair's own help, from main in this process
    with pytest.raises(SystemExit) as info:
        main(["fit", "vae", "--help"])
    assert info.value.code == 0 and "--binarize" in capsys.readouterr().out


def test_fit_fa_with_an_em_schedule(tmp_path, capsys):
    out = tmp_path / "fa"
    args = ["fit", "fa", "--em", "50", "50", "--em-rounds", "2", "--eval-every", "25"]
    assert main(args + ["--eval-particles", "200", "--no-progress", "--out", str(out)]) == 0
    assert {"evidence.png", "predictive_check.png", "learning_curve.png"} <= {
        p.name for p in out.iterdir()
    }
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:4] == ["epoch", "step", "train_elbo", "phase"]
    assert len(history) == 1 + 8  # 200 steps, a row every 25
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_log_evidence", "true_model_log_evidence", "test_log_likelihood"):
        assert key in metrics
    # the importance-sampled estimate is a lower bound of the exact evidence (3 s.e.)
    slack = 3 * metrics["test_log_likelihood_se"]
    assert metrics["test_log_likelihood"] <= metrics["test_log_evidence"] + slack
    assert "test log-evidence" in capsys.readouterr().out


def test_fit_cvae_reports_label_usage_and_a_class_grid(tmp_path, capsys):
    out = tmp_path / "cvae"
    tiny = [a for a in TINY if a != "--no-progress"]
    assert main(["fit", "cvae", *tiny, "--factorization", "prior", "--out", str(out)]) == 0
    assert {"class_conditional.png", "samples.png", "reconstructions.png"} <= {
        p.name for p in out.iterdir()
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["log_likelihood_true_labels"] == pytest.approx(metrics["test_log_likelihood"])
    assert "log_likelihood_shuffled_labels" in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"]["factorization"] == "prior"
    assert config["architecture"]["likelihood"] == "continuous_bernoulli"  # dequantized
    assert "shuffled" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "fa", "--factorization", "full"], "has no option 'factorization'"),
        (["fit", "vae", "--covariance", "diagonal"], "has no option 'covariance'"),
        (["fit", "fa", "--em-rounds", "2"], "--em-rounds needs --em"),
        (["fit", "fa", "--em", "0", "5"], "at least 1"),
        (["fit", "cvae", "--dataset", "fa-synthetic"], "needs labels"),
        (["fit", "vae", "--objective", "iwae", "--kl-weight", "0.5"], "apply to the objectives"),
        (["fit", "vae", "--objective", "miwae"], "needs the option num_estimates"),
        (["fit", "gmvae", "--estimator", "gumbel", "--objective", "enum"], "trains with"),
        (["fit", "gmvae", "--temperature", "1", "0.5", "1e-3"], "--estimator gumbel only"),
        (["fit", "gmvae", "--estimator", "gumbel", "--temperature", "1", "2", "0"], "final"),
        (["fit", "vae", "--clusters", "5"], "has no option 'num_clusters'"),
    ],
)
def test_model_specific_options_are_checked(args, message, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_importance_weighted_objectives_and_kl_annealing(tmp_path):
    out = tmp_path / "miwae"
    args = ["fit", "vae", *TINY, "--objective", "miwae", "--particles", "2", "--estimates", "3"]
    assert main(args + ["--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective_options"] == {"num_estimates": 3}

    out = tmp_path / "annealed"
    args = ["fit", "vae", *TINY, "--kl-weight", "0.5", "--kl-warmup", "8"]
    assert main(args + ["--out", str(out)]) == 0
    header, *rows = (out / "history.csv").read_text().splitlines()
    column = header.split(",").index("kl_weight")
    # 300 points in batches of 100: rows after steps 3 and 6 of the 8-step warm-up to 0.5
    assert [float(r.split(",")[column]) for r in rows] == [0.1875, 0.375]


def test_fit_gmvae_reports_clustering_per_epoch_and_a_cluster_grid(tmp_path, capsys):
    out = tmp_path / "gmvae"
    assert main(["fit", "gmvae", *TINY, "--clusters", "4", "--out", str(out)]) == 0
    assert {"cluster_grid.png", "clustering.png"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "enum" and config["architecture"]["num_clusters"] == 4
    header, *rows = (out / "history.csv").read_text().splitlines()
    assert {"cluster_accuracy", "cluster_nmi", "cluster_entropy"} <= set(header.split(","))
    assert len(rows) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["cluster_accuracy"] <= 1
    assert metrics["test_elbo"] <= metrics["test_log_likelihood"]
    assert "clustering" in capsys.readouterr().out

    out = tmp_path / "gumbel"
    args = ["fit", "gmvae", *TINY, "--clusters", "4", "--estimator", "gumbel"]
    assert main(args + ["--temperature", "1", "0.3", "0.01", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == "meanfield"
    assert config["architecture"]["temperature"] == {"initial": 1, "final": 0.3, "rate": 0.01}


def test_fit_vrnn_reads_rows_and_draws_the_generation_step_by_step(tmp_path):
    out = tmp_path / "vrnn"
    assert main(["fit", "vrnn", *TINY, "--rnn-dim", "16", "--out", str(out)]) == 0
    assert FILES | {"generation_steps.png"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == {
        "z_dim": 4,
        "rnn_dim": 16,
        "hidden": [32],
        "likelihood": "bernoulli",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_elbo"] <= metrics["test_log_likelihood"]
    assert main(["evaluate", str(out), "--particles", "20"]) == 0
