"""Data: built-in data sets, transforms to a likelihood's support, and splits."""

from .dataset import Dataset, check_labels, seeded_split, validate_array
from .loaders import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    SPLIT_SEED,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_idx_directory,
    load_mnist,
    load_mnist_subset,
    load_torchvision,
    read_idx,
)
from .synthetic import FactorAnalysisParams, synthetic_factor_analysis
from .transforms import (
    TEST_SEED,
    TRANSFORMS,
    Dequantization,
    DynamicBinarization,
    FixedBinarization,
    Identity,
    ThresholdBinarization,
    Transform,
    get_transform,
    transform_test_set,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "SPLIT_SEED",
    "TEST_SEED",
    "TRANSFORMS",
    "Dataset",
    "Dequantization",
    "DynamicBinarization",
    "FactorAnalysisParams",
    "FixedBinarization",
    "Identity",
    "ThresholdBinarization",
    "Transform",
    "check_labels",
    "get_transform",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_directory",
    "load_mnist",
    "load_mnist_subset",
    "load_torchvision",
    "read_idx",
    "seeded_split",
    "synthetic_factor_analysis",
    "transform_test_set",
    "validate_array",
]
