"""Issue 23's late errors: data that used to fail at some step, or after the first epoch,
are converted or refused by ``fit`` before its first step (``pyro_aevb.data.checks``,
``pyro_aevb.pair_data``), and ``arguments=`` that is no mapping says what it is.

"Before the first step" is checked directly: the parameters are those the pair was built
with, and nothing was written to the run directory.
"""

import re

import pyro
import pytest
import torch
from pyro_aevb.guides import ConditionalDiagonalNormalGuide
from pyro_aevb.models import ConditionalVAE

from pyro_aevb import fit
from tests.conftest import tiny_vae

OPTIONS = dict(epochs=2, batch_size=50, lr=1e-2, seed=3, progress=False)


@pytest.fixture(scope="module")
def binary(digits):
    train, test = digits
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(train.x[:200], generator=g)
    return x, train.y[:200], torch.bernoulli(test.x[:60], generator=g), test.y[:60]


def _weights(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _refused_before_the_first_step(tmp_path, model, guide, train, test=None, **kwargs):
    """The error ``fit`` raises, after checking that no step was taken and nothing written."""
    before = _weights(model, guide)
    run_dir = tmp_path / "run"
    with pytest.raises((ValueError, TypeError)) as caught:
        fit(model, guide, train, test, run_dir=run_dir, **OPTIONS, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model, guide), strict=True))
    assert not run_dir.exists() or not any(run_dir.iterdir())
    return str(caught.value)


# -- float64 data ---------------------------------------------------------------------------


def test_float64_data_are_converted_to_the_pairs_dtype_with_a_note_and_train_alike(binary):
    """Binary data are exact in float32: the float64 run is the float32 run, step by step."""
    x, _, x_test, _ = binary
    model, guide = tiny_vae()
    reference = fit(model, guide, {"x": x}, {"x": x_test}, **OPTIONS).history
    pyro.clear_param_store()
    model, guide = tiny_vae()
    with pytest.warns(UserWarning, match=r"'x' \(torch.float64\) converted to torch.float32"):
        history = fit(model, guide, {"x": x.double()}, {"x": x_test.double()}, **OPTIONS).history
    for ours, theirs in zip(history, reference, strict=True):
        assert ours["train_elbo"] == pytest.approx(theirs["train_elbo"], rel=1e-6)
        assert ours["test_elbo"] == pytest.approx(theirs["test_elbo"], rel=1e-6)


def test_a_float64_pair_keeps_float64_data():
    from pyro_aevb.data.checks import convert_floating

    fields = {"x": torch.zeros(3, 2, dtype=torch.float64), "y": torch.zeros(3, dtype=torch.long)}
    out = convert_floating(fields, torch.float64, "training")
    assert out["x"] is fields["x"] and out["y"] is fields["y"]


# -- labels ---------------------------------------------------------------------------------


def _cvae():
    torch.manual_seed(0)
    return ConditionalVAE(64, 10, 4, (32,)), ConditionalDiagonalNormalGuide(64, 10, 4, (32,))


def test_a_label_outside_the_classes_deep_in_the_data_is_refused_before_the_first_step(
    binary, tmp_path
):
    x, y, _, _ = binary
    y = y.clone()
    y[170] = 10  # in the fourth batch of 50 of an unshuffled epoch; any batch when shuffled
    message = _refused_before_the_first_step(tmp_path, *_cvae(), {"x": x, "y": y})
    assert "field 'y' must lie in 0..9" in message and "first at index 170" in message


@pytest.mark.parametrize(
    "labels, expected",
    [
        (lambda y: y.float(), r"integer class labels 0..9, got dtype torch.float32 .*y.long\(\)"),
        (lambda y: y[:, None], r"shape \(200,\), got \(200, 1\) \(pass y.squeeze\(-1\)\)"),
        (lambda y: torch.nn.functional.one_hot(y, 10).float(), r"one-hot rows\? pass y.argmax"),
    ],
    ids=["float", "column", "one-hot"],
)
def test_labels_of_the_wrong_kind_or_shape_are_named(binary, tmp_path, labels, expected):
    x, y, _, _ = binary
    message = _refused_before_the_first_step(tmp_path, *_cvae(), {"x": x, "y": labels(y)})
    assert re.search(expected, message), message


def test_test_labels_outside_the_classes_are_refused_before_the_first_step(binary, tmp_path):
    x, y, x_test, y_test = binary
    y_test = y_test.clone()
    y_test[-1] = 12
    message = _refused_before_the_first_step(
        tmp_path, *_cvae(), {"x": x, "y": y}, {"x": x_test, "y": y_test}
    )
    assert "field 'y' must lie in 0..9" in message and "first at index 59" in message


def test_missing_labels_are_allowed_where_the_model_takes_none():
    from pyro_aevb.data.checks import check_class_labels

    y = torch.tensor([0, 2, -1, 1])
    check_class_labels(y, 3, 4, "ys", allow_missing=True)
    with pytest.raises(ValueError, match=r"0..2 \(the model was built for 3 classes\)"):
        check_class_labels(y, 3, 4, "ys")


# -- a test set unlike the training set -----------------------------------------------------


def test_a_test_set_of_another_width_is_refused_before_the_first_step(binary, tmp_path):
    x, _, x_test, _ = binary
    model, guide = tiny_vae()
    message = _refused_before_the_first_step(
        tmp_path, model, guide, {"x": x}, {"x": x_test[:, :32]}
    )
    assert "test field 'x' has shape (60, 32), (32,) per data point" in message
    assert "the training data's has (64,)" in message


def test_a_test_field_of_another_kind_is_refused():
    from pyro_aevb.data.checks import check_like_training

    train = {"x": torch.zeros(4, 3), "mask": torch.ones(4, 3, dtype=torch.bool)}
    test = {"x": torch.zeros(2, 3), "mask": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"'mask' is floating \(torch.float32\) but the "):
        check_like_training(test, train)
    # a padded sequence may be longer or shorter in the test set; its steps must match
    seq_train, seq_test = {"x": torch.zeros(4, 7, 3)}, {"x": torch.zeros(2, 9, 3)}
    assert check_like_training(seq_test, seq_train)["x"] is seq_test["x"]


# -- arguments= that is no mapping ----------------------------------------------------------


def test_arguments_given_as_a_list_say_what_arguments_maps(binary, tmp_path):
    x, _, _, _ = binary
    model, guide = tiny_vae()
    message = _refused_before_the_first_step(tmp_path, model, guide, {"x": x}, arguments=["xs"])
    assert "arguments maps the model's and guide's parameter names to data field names" in message
    assert "got a list (['xs'])" in message and "arguments={'xs': 'x', 'ys': 'y'}" in message
    assert "'x': 's'" not in message
