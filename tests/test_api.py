"""The public API: what ``fit`` and ``evaluate`` need, documented, and the old names still work."""

import pytest
import torch

import pyro_aevb


def test_every_public_name_is_importable_and_documented():
    for name in pyro_aevb.__all__:
        obj = getattr(pyro_aevb, name)
        # a class's own docstring (not inherited), a function's docstring
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
        assert doc and doc.strip(), f"pyro_aevb.{name} has no docstring"


def test_fits_signature_needs_nothing_outside_the_package():
    for name in ("KLAnnealing", "AlternatingSchedule", "JointSchedule", "TrainingStep",
                 "Dataset", "Transform", "IWAE", "MIWAE", "CIWAE", "PIWAE", "STLELBO"):  # fmt: skip
        assert name in pyro_aevb.__all__, name
    for internal in ("full_data_size", "log_importance_weights"):
        assert internal not in pyro_aevb.__all__
        with pytest.warns(FutureWarning, match=f"pyro_aevb.{internal} is deprecated"):
            getattr(pyro_aevb, internal)


def test_old_guide_names_are_deprecated_aliases_of_the_new_ones():
    from pyro_aevb import guides

    renamed = {
        "DiagonalNormalEncoder": guides.DiagonalNormalGuide,
        "ConditionalDiagonalNormalEncoder": guides.ConditionalDiagonalNormalGuide,
        "GMVAEEncoder": guides.GMVAEGuide,
        "VRNNEncoder": guides.VRNNGuide,
    }
    for old, new in renamed.items():
        with pytest.warns(FutureWarning, match=new.__name__):
            assert getattr(guides, old) is new
    guide = guides.DiagonalNormalGuide(6, 2, (5,))
    x = torch.rand(3, 6)
    with pytest.warns(FutureWarning, match="encode"):
        old = guide.posterior(x)
    for a, b in zip(old, guide.encode(x), strict=True):
        assert torch.equal(a, b)


def test_pyro_names_are_those_checkpoints_recorded():
    # the param-store prefixes enter every checkpoint's fingerprint: they must not change
    from pyro_aevb import guides, models

    assert models.VAE.pyro_name == "decoder"
    assert models.FactorAnalysis.pyro_name == "factor_analysis"
    assert models.ConditionalVAE.pyro_name == "cvae"
    assert models.GaussianMixtureVAE.pyro_name == "gmvae"
    assert models.VRNN.pyro_name == "vrnn"
    assert guides.DiagonalNormalGuide.pyro_name == "encoder"
    assert guides.LinearGaussianGuide.pyro_name == "encoder"
    assert guides.GMVAEGuide.pyro_name == "gmvae_encoder"
    assert guides.VRNNGuide.pyro_name == "vrnn_encoder"


def test_every_generate_returns_means_by_default():
    import inspect

    from pyro_aevb import models

    for cls in (models.ConditionalVAE, models.GaussianMixtureVAE, models.VRNN):
        assert inspect.signature(cls.generate).parameters["mean"].default is True, cls
