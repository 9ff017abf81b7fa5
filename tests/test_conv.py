"""Convolutional encoders and decoders (pyro_aevb.conv, models.ConvVAE, guides.conv): the
documented layer sizes for 28 x 28 images, the likelihood as the sum over pixels written by
hand, images kept as images, clear errors, and fit vae --architecture conv with resume."""

from __future__ import annotations

import json

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro_aevb.guides import ConvDiagonalNormalGuide, ConvFlowGuide
from pyro_aevb.models import ConvVAE

from pyro_aevb.cli import main
from pyro_aevb.conv import ConvDecoder, ConvEncoder
from pyro_aevb.runs import load_run


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: a second intra-op thread only contends on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_layer_sizes_for_28x28_images_are_the_documented_ones():
    torch.manual_seed(0)
    encoder = ConvEncoder((28, 28), hidden=(500,))
    x = torch.rand(3, 28, 28)
    first = encoder.convolutions[:2](x.reshape(3, 1, 28, 28))
    assert first.shape == (3, 32, 14, 14)
    assert encoder.convolutions(x.reshape(3, 1, 28, 28)).shape == (3, 64, 7, 7)
    assert encoder.dense[0].in_features == 3136 and encoder(x).shape == (3, 500)
    decoder = ConvDecoder((28, 28), z_dim=20, hidden=(500,))
    assert decoder.dense[0].in_features == 20 and decoder.dense[-2].out_features == 3136
    assert decoder.deconvolutions[:2](torch.rand(3, 64, 7, 7)).shape == (3, 32, 14, 14)
    assert decoder(torch.randn(3, 20)).shape == (3, 28, 28)
    # leading particle dimensions pass through
    assert decoder(torch.randn(5, 3, 20)).shape == (5, 3, 28, 28)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_the_likelihood_is_the_sum_over_pixels_of_the_decoder_logits(likelihood):
    torch.manual_seed(1)
    model = ConvVAE((8, 8), z_dim=3, hidden=(16,), likelihood=likelihood)
    guide = ConvDiagonalNormalGuide((8, 8), z_dim=3, hidden=(16,))
    x = torch.rand(4, 8, 8)
    if likelihood == "bernoulli":
        x = x.round()
    guide_trace = poutine.trace(guide).get_trace(x)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    site = trace.nodes["x"]
    assert site["value"].shape == (4, 8, 8) and site["fn"].event_shape == (8, 8)  # images
    logits = model.decoder(guide_trace.nodes["z"]["value"])
    p = torch.sigmoid(logits)
    by_hand = x * torch.log(p) + (1 - x) * torch.log1p(-p)
    if likelihood == "continuous_bernoulli":
        # C(p) = 2 artanh(1 - 2p) / (1 - 2p), the continuous Bernoulli's normalizer
        by_hand = by_hand + torch.log(2 * torch.atanh(1 - 2 * p) / (1 - 2 * p))
    assert torch.allclose(site["fn"].log_prob(x), by_hand.sum((-1, -2)), atol=1e-4)


def test_conv_flow_guide_scores_its_draws_with_the_flow():
    torch.manual_seed(2)
    guide = ConvFlowGuide((8, 8), z_dim=3, hidden=(16,), flow="iaf", num_layers=2)
    x = torch.rand(4, 8, 8).round()
    site = poutine.trace(guide).get_trace(x).nodes["z"]
    assert isinstance(site["fn"], dist.TransformedDistribution) and site["value"].shape == (4, 3)
    fresh = site["fn"].log_prob(site["value"].detach().clone())  # by the exact inverse
    assert torch.allclose(site["fn"].log_prob(site["value"]), fresh, atol=1e-5)


def test_bad_shapes_are_refused_with_what_to_do():
    model = ConvVAE((8, 8), z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="do not flatten the data"):
        model(torch.rand(4, 64))
    with pytest.raises(ValueError, match="multiples of 4"):
        ConvVAE((30, 30))
    with pytest.raises(ValueError, match=r"image_shape=\(12, 12\)"):
        ConvDiagonalNormalGuide((8, 8), 2, (8,))(torch.rand(4, 12, 12))


TINY = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--max-train", "200",
        "--max-test", "50", "--eval-particles", "20", "--no-progress",
        "--architecture", "conv"]  # fmt: skip


@pytest.mark.parametrize("guide", ["diagonal", "iaf"])
def test_fit_conv_resumes_to_the_parameters_of_a_straight_run(guide, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*TINY, "--guide", guide, "--flow-layers", "2"]
    assert main(["fit", "vae", *args, "--epochs", "2", "--out", str(straight)]) == 0
    assert main(["fit", "vae", *args, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main(["fit", "vae", *args, "--epochs", "2", "--out", str(resumed), "--resume"]) == 0
    config = json.loads((resumed / "config.json").read_text())
    assert config["architecture"]["architecture"] == "conv"
    a, b = load_run(straight), load_run(resumed)
    assert a.test.x.dim() == 3  # the run's data stay images
    for module in ("model", "guide"):
        sa, sb = getattr(a, module).state_dict(), getattr(b, module).state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (module, key)
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    assert ma["test_elbo"] == mb["test_elbo"] and ma["epochs_completed"] == 2


def test_the_conv_cvae_scores_images_given_labels_pixel_by_pixel():
    from pyro_aevb.guides import ConvConditionalDiagonalNormalGuide
    from pyro_aevb.models import ConvConditionalVAE

    torch.manual_seed(3)
    model = ConvConditionalVAE((8, 8), num_classes=3, z_dim=2, hidden=(16,))
    guide = ConvConditionalDiagonalNormalGuide((8, 8), num_classes=3, z_dim=2, hidden=(16,))
    x, y = torch.rand(4, 8, 8), torch.tensor([0, 1, 2, 1])
    guide_trace = poutine.trace(guide).get_trace(x, y)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    z = guide_trace.nodes["z"]["value"]
    onehot = torch.nn.functional.one_hot(y, 3).float()
    logits = model.decoder(torch.cat([z, onehot], -1))
    by_hand = dist.ContinuousBernoulli(logits=logits).log_prob(x).sum((-1, -2))
    assert trace.nodes["x"]["fn"].event_shape == (8, 8)
    assert torch.allclose(trace.nodes["x"]["fn"].log_prob(x), by_hand, atol=1e-5)
    # the label reaches the encoder: another label, another q(z | x, y)
    loc, _ = guide.encode(x, y)
    other, _ = guide.encode(x, (y + 1) % 3)
    assert not torch.allclose(loc, other)


def test_fit_cvae_with_conv_networks_and_a_flow_guide(tmp_path):
    out = tmp_path / "run"
    args = ["fit", "cvae", *TINY, "--guide", "iaf", "--flow-layers", "2", "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    run = load_run(out)
    assert type(run.model).__name__ == "ConvConditionalVAE" and run.test.x.dim() == 3
    assert type(run.guide).__name__ == "ConvConditionalFlowGuide"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "label_gain" in metrics and "collapse_note" in metrics  # a flow: a note
    assert (out / "class_conditional.png").exists()


def test_a_run_written_before_the_conv_and_flow_options_still_evaluates(tmp_path):
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--architecture", "conv")]
    assert main(["fit", "vae", *args, "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    for key in ("guide", "flow_layers", "architecture"):  # as a run of an older version wrote it
        del config["architecture"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(out), "--particles", "20"]) == 0
    run = load_run(out)
    assert type(run.guide).__name__ == "DiagonalNormalGuide" and run.test.x.dim() == 2


@pytest.mark.parametrize("estimator", ["enumerate", "gumbel"])
def test_fit_gmvae_with_conv_networks(estimator, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "gmvae", *TINY, "--clusters", "3", "--estimator", estimator, "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    run = load_run(out)
    assert type(run.model).__name__ == "ConvGaussianMixtureVAE" and run.test.x.dim() == 3
    assert type(run.guide).__name__ == "ConvGMVAEGuide"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["cluster_accuracy"] <= 1 and (out / "cluster_grid.png").exists()
    # the enumerated cluster reaches the conv decoder as a leading dimension
    trace = poutine.trace(poutine.enum(run.guide.eval(), first_available_dim=-2)).get_trace(
        run.test.x[:5]
    )
    assert trace.nodes["z"]["value"].shape == (3, 5, 2)
    assert run.model.decoder(trace.nodes["z"]["value"]).shape == (3, 5, 8, 8)
