"""Data-parallel training through Lightning Fabric: 2 (or 3) processes, gloo, on CPU.

The central fact (``pyro_aevb.training.distributed``): with the global batch split over
``W`` ranks, each rank's data plate scaled by ``N / B_r`` and its loss weighted by
``W B_r / B``, the mean of the ranks' gradients (DDP's all-reduce) is the gradient one
process computes on the whole batch. With the particle noise fixed per data point (a
guide that reads its standard-normal draws from a data field), a 2-rank run must then
reach the parameters of a 1-process run, up to all-reduce round-off.
"""

import math
import os
import signal
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_aevb.guides import DiagonalNormalGuide, GMVAEGuide
from pyro_aevb.models import VAE, GaussianMixtureVAE

import pyro_aevb.checkpoint as ckpt
from pyro_aevb import NonFiniteLossError, data_plate, elbo_per_datapoint, fit
from pyro_aevb.cli import main
from pyro_aevb.contract import check_pair
from pyro_aevb.data import load_digits
from pyro_aevb.data.transforms import get_transform
from pyro_aevb.evaluation import prepare_fields
from pyro_aevb.objectives import make_objective
from pyro_aevb.training import distributed
from pyro_aevb.training.step import TrainingStep
from tests.conftest import tiny_vae
from tests.test_training import _NaNAfter, _state

pytest.importorskip("lightning_fabric")

N, BATCH, Z = 256, 64, 4
QUIET = dict(progress=False, seed=3)


class FixedNoiseNormal(dist.Normal):
    """A Normal whose reparameterized sample is ``loc + scale * noise`` with ``noise``
    given per data point ``(B, K, L)``: the noise follows its data point to whichever
    rank holds it, so sharding cannot change it."""

    def __init__(self, loc, scale, noise, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        self.noise = noise

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return FixedNoiseNormal(self.loc.expand(shape), self.scale.expand(shape), self.noise)

    def rsample(self, sample_shape=()):
        eps = self.noise.movedim(1, 0)  # (K, B, L)
        k = eps.shape[0]
        if k > 1 and self.loc.dim() >= 3 and self.loc.shape[0] == k:
            # vectorized particles left of the plates: (K, 1, ..., B, L)
            eps = eps.reshape(eps.shape[:1] + (1,) * (self.loc.dim() - 3) + eps.shape[1:])
        else:  # one particle (the contract check traces without the particle plate)
            eps = eps[0]
        return self.loc + self.scale * eps


def _latent(loc, scale, noise):
    return dist.Normal(loc, scale) if noise is None else FixedNoiseNormal(loc, scale, noise)


class FixedNoiseEncoder(DiagonalNormalGuide):
    def forward(self, x, noise=None):
        pyro.module("encoder", self)
        with data_plate(x):
            loc, scale = self.encode(x)
            pyro.sample("z", _latent(loc, scale, noise).to_event(1))


class FixedNoiseGMVAEGuide(GMVAEGuide):
    def forward(self, x, noise=None):
        pyro.module("gmvae_encoder", self)
        with data_plate(x):
            logits = self.cluster_logits(x)
            y = pyro.sample(
                "y", dist.OneHotCategorical(logits=logits), infer={"enumerate": "parallel"}
            )
            loc, scale = self.encode(x, y)
            pyro.sample("z", _latent(loc, scale, noise).to_event(1))


def _pair(objective):
    torch.manual_seed(0)
    if objective == "enum":
        return GaussianMixtureVAE(64, 3, Z, (16,)), FixedNoiseGMVAEGuide(64, 3, Z, (16,))
    return VAE(64, Z, (16,)), FixedNoiseEncoder(64, Z, (16,))


@pytest.fixture(scope="module")
def data(digits):
    train, test = digits
    return train.subset(range(N)), test.subset(range(100))


@pytest.mark.parametrize(
    "objective, particles", [("elbo", 1), ("iwae", 5), ("enum", 1)], ids=["elbo", "iwae5", "enum"]
)
def test_two_processes_reach_the_parameters_of_one(data, objective, particles):
    """Same global batches (the shared shuffle), the same dynamic binarization (every rank
    draws the whole epoch's, as one process) and the same noise per data point: 8 Adam
    steps on 2 ranks at global batch 64 end where 1 process at batch 64 ends, to 1e-5."""
    train, _ = data
    noise = torch.randn(N, particles, Z, generator=torch.Generator().manual_seed(1))
    fields = {"x": train.x, "noise": noise}
    settings = dict(
        objective=objective,
        num_particles=particles,
        epochs=2,
        batch_size=BATCH,
        lr=3e-3,
        transform="dynamic",
        **QUIET,
    )
    one = _pair(objective)
    ref = fit(*one, fields, **settings)
    two = _pair(objective)
    got = fit(*two, fields, devices=2, **settings)
    a, b = _state(*one), _state(*two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(not torch.equal(a[k], _state(*_pair(objective))[k]) for k in a)  # it trained
    # the reported loss is the global batch's (the ranks' weighted mean), as in one process
    for r1, r2 in zip(ref.history, got.history, strict=True):
        assert r2["train_elbo"] == pytest.approx(r1["train_elbo"], abs=1e-5)


def test_uneven_shards_and_three_processes_on_two_cores(data):
    """Batches of 50 over 3 ranks are split 17/17/16 and the last batch of the epoch
    (6 points) 2/2/2: the weights W B_r / B keep the gradient the single-process one.
    Three processes on this 2-core machine run (one thread each)."""
    train, _ = data
    noise = torch.randn(N, 1, Z, generator=torch.Generator().manual_seed(2))
    fields = {"x": train.x, "noise": noise}
    settings = dict(epochs=1, batch_size=50, lr=3e-3, transform="dynamic", **QUIET)
    one, three = _pair("elbo"), _pair("elbo")
    fit(*one, fields, **settings)
    fit(*three, fields, devices=3, **settings)
    a, b = _state(*one), _state(*three)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_the_history_evaluates_as_one_process_and_the_caller_gets_the_parameters(data):
    """Rank 0's history is the run's; its test ELBO is a single-process evaluation of the
    trained parameters, which come back into the caller's model and guide."""
    train, test = data
    model, guide = tiny_vae(hidden=(16,))
    result = fit(
        model,
        guide,
        train,
        test,
        epochs=2,
        batch_size=BATCH,
        devices=2,
        transform="dynamic",
        **QUIET,
    )
    assert [r["epoch"] for r in result.history] == [1, 2]
    fields = prepare_fields(test, get_transform("dynamic"), torch.device("cpu"))
    again = elbo_per_datapoint(model, guide, fields, seed=QUIET["seed"])
    assert result.history[-1]["test_elbo"] == pytest.approx(float(again.mean()), abs=1e-6)


def test_ddp_sees_every_parameter_of_the_pair(data):
    """The objective module holds exactly the pair's Pyro parameters (the tensors the
    loss reaches), and the loss reaches all of them for the VAE and the GMVAE."""
    train, _ = data
    for objective in ("elbo", "enum"):
        pyro.clear_param_store()
        model, guide = _pair(objective)
        batch = {"x": train.x[:8].bernoulli(generator=torch.Generator().manual_seed(0))}
        summary = check_pair(model, guide, batch, allow_model_enumeration=objective == "enum")
        step = TrainingStep(model, guide, make_objective(objective), summary, batch, N)
        module = distributed.ObjectiveModule(step)
        pair = {id(p) for m in (model, guide) for p in m.parameters()}
        assert {id(p) for p in module.parameters()} == pair == {id(p) for p in step.parameters}
        assert distributed.unreached_parameters(step, batch) == []
    unused = pyro.param("unused", torch.zeros(3))
    step.parameters.append(unused)
    step.names[unused] = "unused"
    assert distributed.unreached_parameters(step, batch) == ["unused"]


class _KilledRank(VAE):
    """SIGKILLs rank 1 before training step ``at`` (0-based): a process lost mid-epoch."""

    def __init__(self, *args, at, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def set_training_step(self, step):
        if step == self.at and torch.distributed.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_rank_stops_the_run_and_resume_continues_exactly(data, tmp_path):
    train, test = data
    settings = dict(epochs=3, batch_size=BATCH, devices=2, transform="dynamic", **QUIET)
    reference = tiny_vae(hidden=(16,), dropout=0.1)
    ref = fit(*reference, train, test, run_dir=tmp_path / "a", **settings)

    torch.manual_seed(0)
    killed = (_KilledRank(64, 4, (16,), dropout=0.1, at=6), tiny_vae(hidden=(16,), dropout=0.1)[1])
    killed[0].load_state_dict(tiny_vae(hidden=(16,), dropout=0.1)[0].state_dict())
    run = tmp_path / "b"
    with pytest.raises(distributed.RankFailedError, match=r"process 1 of 2 was killed \(SIGKILL\)"):
        fit(*killed, train, test, run_dir=run, **settings)
    state = ckpt.load(run / ckpt.CHECKPOINT_NAME)
    assert state["epoch"] == 1 and len(state["rank_rng"]) == 2

    resumed = tiny_vae(hidden=(16,), dropout=0.1, seed=99)  # all state must come from disk
    got = fit(*resumed, train, test, run_dir=run, resume=True, **settings)
    a, b = _state(*reference), _state(*resumed)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert [r["test_elbo"] for r in got.history] == pytest.approx(
        [r["test_elbo"] for r in ref.history], abs=1e-6
    )
    # a resume with other settings is refused, naming them
    with pytest.raises(ValueError, match="devices=2->None"):
        fit(
            *tiny_vae(hidden=(16,), dropout=0.1),
            train,
            test,
            run_dir=run,
            resume=True,
            **{k: v for k, v in settings.items() if k != "devices"},
        )


def test_cuda_without_gpus_is_refused_before_any_work(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    train, _ = data
    with pytest.raises(ValueError, match="sees no CUDA device"):
        fit(*tiny_vae(), train, devices=2, device="cuda", run_dir=tmp_path / "r", **QUIET)
    assert not (tmp_path / "r").exists()
    out = tmp_path / "cli"
    code = main(
        [
            "fit",
            "vae",
            "--dataset",
            "digits",
            "--devices",
            "2",
            "--device",
            "cuda",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 2 and "sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_batches_too_small_to_split_are_refused(data):
    train, _ = data
    with pytest.raises(ValueError, match="batch of 1 data point"):
        fit(*tiny_vae(), train.subset(range(65)), batch_size=64, devices=2, **QUIET)


def test_bf16_mixed_trains_with_the_nan_guard_and_a_float32_test_elbo(data, tmp_path):
    train, test = data
    model, guide = tiny_vae(hidden=(16,))
    result = fit(
        model,
        guide,
        train,
        test,
        epochs=3,
        batch_size=BATCH,
        lr=3e-3,
        transform="dynamic",
        precision="bf16-mixed",
        **QUIET,
    )
    elbos = [r["test_elbo"] for r in result.history]
    assert elbos[-1] > elbos[0]  # it trains
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the test ELBO is the evaluation of the float32 parameters outside autocast (float32
    # arithmetic, summed in float64): the same number again, no bfloat16 in it
    fields = prepare_fields(test, get_transform("dynamic"), torch.device("cpu"))
    again = elbo_per_datapoint(model, guide, fields, seed=QUIET["seed"])
    assert again.dtype in (torch.float32, torch.float64)
    assert elbos[-1] == pytest.approx(float(again.mean()), abs=1e-6)

    nan_model = _NaNAfter(64, 4, (16,), nan_from=10)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        fit(
            nan_model,
            tiny_vae(hidden=(16,))[1],
            train,
            epochs=3,
            batch_size=BATCH,
            transform="dynamic",
            precision="bf16-mixed",
            run_dir=tmp_path,
            **QUIET,
        )
    state = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)
    assert state["epoch"] == 1 and state["config"]["precision"] == "bf16-mixed"
    assert all(torch.isfinite(v).all() for v in state["modules"]["model"].values())


def _fit_with_logger(data, run_dir, logger: str):
    """Two epochs of a tiny VAE with ``logger``, through Fabric in one process."""
    train, test = data
    return fit(
        *tiny_vae(hidden=(16,)),
        train,
        test,
        epochs=2,
        batch_size=BATCH,
        transform="dynamic",
        logger=logger,
        run_dir=run_dir,
        **QUIET,
    )


def test_the_csv_logger_writes_the_history_rows(data, tmp_path):
    result = _fit_with_logger(data, tmp_path, "csv")
    import csv

    (metrics,) = tmp_path.glob("logs/csv/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in result.history]
    for logged, row in zip(rows, result.history, strict=True):
        assert float(logged["test_elbo"]) == pytest.approx(row["test_elbo"])
        assert float(logged["train_elbo"]) == pytest.approx(row["train_elbo"])


def _tensorboard_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard event file, read record by record (a TFRecord: length,
    its CRC, the serialized Event, its CRC), without TensorBoard itself."""
    import struct

    from tensorboardX.proto import event_pb2

    data, i, scalars = path.read_bytes(), 0, {}
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
        i += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_the_tensorboard_logger_writes_the_history_rows(data, tmp_path):
    pytest.importorskip("tensorboardX")
    result = _fit_with_logger(data, tmp_path, "tensorboard")
    files = list(tmp_path.glob("logs/tensorboard/**/events.out.tfevents.*"))
    assert files, "no TensorBoard event file was written"
    scalars = {}
    for path in files:
        for tag, values in _tensorboard_scalars(path).items():
            scalars.setdefault(tag, []).extend(values)
    for name in ("test_elbo", "train_elbo"):
        logged = sorted(scalars[name])
        assert [step for step, _ in logged] == [row["step"] for row in result.history]
        for (_, value), row in zip(logged, result.history, strict=True):
            assert value == pytest.approx(row[name], rel=1e-6)  # stored as float32


def test_one_device_never_imports_fabric_and_its_absence_is_explained(data, monkeypatch):
    code = (
        "import sys; from tests.conftest import tiny_vae; from pyro_aevb import fit; "
        "from pyro_aevb.data import load_digits; "
        "train = load_digits()[0].flat().subset(range(64)); "
        "fit(*tiny_vae(), train, epochs=1, batch_size=32, transform='dynamic', progress=False); "
        "assert 'lightning_fabric' not in sys.modules and 'lightning' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    monkeypatch.setitem(sys.modules, "lightning_fabric", None)
    hint = r'pip install "pyro-aevb\[distributed\]"'
    with pytest.raises(distributed.FabricMissingError, match=hint):
        fit(*tiny_vae(), data[0], devices=2, **QUIET)


def test_the_command_line_trains_on_three_processes(tmp_path, capsys):
    from tests.test_cli import TINY

    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--devices", "3", "--out", str(out)]) == 0
    state = ckpt.load(out / ckpt.CHECKPOINT_NAME)
    assert state["config"]["devices"] == 3 and len(state["rank_rng"]) == 3
    assert (out / "metrics.json").exists() and "test log-likelihood" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--particles", "50"]) == 0  # in one process
    # a launch that would re-run the command in every process is refused before any work
    code = main(["fit", "vae", *TINY, "--devices", "2", "--strategy", "ddp", "--out", str(out)])
    assert code == 2 and "Launch a Python script" in capsys.readouterr().err


def test_the_vrnn_with_masked_sequences_trains_on_two_processes():
    """Sequences of different lengths (prefix masks) are sharded like any field: the
    per-sequence bound sums over the data plate, so two processes train the VRNN."""
    from tests.test_vrnn import _pair as vrnn_pair

    train = load_digits()[0].rows()
    x = train.x[:200].bernoulli(generator=torch.Generator().manual_seed(0))
    lengths = torch.randint(1, 9, (200, 1), generator=torch.Generator().manual_seed(1))
    fields = {"x": x, "mask": torch.arange(8)[None, :] < lengths}
    model, guide = vrnn_pair()
    result = fit(model, guide, fields, epochs=4, batch_size=50, lr=1e-2, devices=2, **QUIET)
    losses = [-row["train_elbo"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 1


def test_a_nan_on_two_processes_raises_the_nan_guards_error_in_the_caller(data, tmp_path):
    """The guard sees the all-reduced gradient, so every rank stops at the same step, and
    the caller gets the guard's own error (not a process failure), the checkpoint intact."""
    train, _ = data
    model, guide = _NaNAfter(64, 4, (16,), nan_from=10), tiny_vae(hidden=(16,))[1]
    with pytest.raises(NonFiniteLossError, match="at epoch 2, step"):
        fit(
            model,
            guide,
            train,
            epochs=3,
            batch_size=BATCH,
            transform="dynamic",
            devices=2,
            run_dir=tmp_path,
            **QUIET,
        )
    assert ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)["epoch"] == 1
