r"""Convolutional encoder and decoder networks for images ``(B, H, W)`` (one channel).

The encoder halves the image twice, the decoder mirrors it; for 28 x 28 inputs
(MNIST, Fashion-MNIST) with the default channels ``(32, 64)``:

=========================  ==============================  ===================
layer                      encoder                         output shape
=========================  ==============================  ===================
input                      image                           ``(B, 1, 28, 28)``
Conv2d 4x4, stride 2, p 1  1 -> 32 channels, ReLU          ``(B, 32, 14, 14)``
Conv2d 4x4, stride 2, p 1  32 -> 64 channels, ReLU         ``(B, 64, 7, 7)``
flatten, Linear + ReLU     3136 -> ``hidden`` (each)       ``(B, hidden[-1])``
=========================  ==============================  ===================

and the decoder, from :math:`z` ``(B, L)``: ``Linear + ReLU`` through ``hidden`` (in
reverse) to ``64 * 7 * 7``, reshaped to ``(B, 64, 7, 7)``; ``ConvTranspose2d`` 4x4, stride
2, padding 1, 64 -> 32 channels, ReLU: ``(B, 32, 14, 14)``; ``ConvTranspose2d`` 32 -> 1:
``(B, 1, 28, 28)``, the logits of every pixel, returned as ``(B, 28, 28)``. Any height
and width divisible by 4 works (8 x 8 digits: 4 x 4, then 2 x 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .nn import MLP

#: channels of the two convolutions of the encoder (the decoder's, reversed)
DEFAULT_CHANNELS = (32, 64)


def check_image_shape(image_shape: Sequence[int], owner: str) -> tuple[int, int]:
    """``(H, W)``, after checking that both are positive multiples of 4.

    :raises ValueError: naming what to do otherwise.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or min(shape) < 4 or shape[0] % 4 or shape[1] % 4:
        raise ValueError(
            f"{owner} takes one-channel images whose height and width are multiples of 4 "
            f"(two stride-2 convolutions), got image shape {shape}; use the MLP "
            "architecture for other data"
        )
    return shape


def check_image_input(x: torch.Tensor, image_shape: tuple[int, int], owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of images ``(B, H, W)``."""
    if x.dim() != 3 or tuple(x.shape[1:]) != tuple(image_shape):
        hint = (
            "the conv architecture reads images, not vectors: do not flatten the data"
            if x.dim() == 2
            else f"build {owner} with image_shape={tuple(x.shape[1:])} for this data"
        )
        raise ValueError(
            f"{owner} expects x of shape (batch, {image_shape[0]}, {image_shape[1]}), "
            f"got {tuple(x.shape)}; {hint}"
        )


class ConvEncoder(nn.Module):
    """Images ``(B, H, W)`` to features ``(B, hidden[-1])``: two stride-2 convolutions,
    then dense layers of sizes ``hidden`` (module docstring for the sizes).

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param hidden: sizes of the dense layers after the convolutions (at least one).
    :param channels: the two convolutions' output channels.
    :param dropout: dropout rate after each dense layer.
    :param extra_inputs: ``E`` features that skip the convolutions and join the flattened
        feature maps before the dense layers (a one-hot label); the input is then
        ``(B, H * W + E)``, the pixels flattened then the extra features.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden: Sequence[int] = (500,),
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dropout: float = 0.0,
        extra_inputs: int = 0,
    ):
        super().__init__()
        if not hidden:
            raise ValueError("ConvEncoder needs at least one dense layer after the convolutions")
        self.image_shape = check_image_shape(image_shape, "ConvEncoder")
        c1, c2 = channels
        h, w = self.image_shape
        self.convolutions = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
        )
        self.extra_inputs = int(extra_inputs)
        self.dense = MLP(
            [c2 * (h // 4) * (w // 4) + self.extra_inputs, *hidden],
            dropout=dropout,
            activate_output=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` images, or ``(B, H * W + E)`` with ``extra_inputs = E``."""
        if self.extra_inputs:
            pixels = self.image_shape[0] * self.image_shape[1]
            batch, extra, x = x.shape[:-1], x[..., pixels:], x[..., :pixels]
        else:
            batch, extra = x.shape[:-2], None
        features = self.convolutions(x.reshape(-1, 1, *self.image_shape)).flatten(1)
        if extra is not None:
            features = torch.cat([features, extra.reshape(-1, self.extra_inputs)], -1)
        return self.dense(features).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Latents ``(..., L)`` to pixel logits ``(..., H, W)``: dense layers through
    ``hidden`` (the encoder's, reversed), then two stride-2 transposed convolutions.

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param z_dim: latent dimension ``L``.
    :param hidden: the encoder's dense sizes (used in reverse order).
    :param channels: the encoder's convolution channels (used in reverse order).
    :param dropout: dropout rate after each dense layer.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (500,),
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "ConvDecoder")
        c1, c2 = channels
        h, w = self.image_shape
        self.grid = (c2, h // 4, w // 4)
        sizes = [z_dim, *reversed(tuple(hidden)), c2 * (h // 4) * (w // 4)]
        self.dense = MLP(sizes, dropout=dropout, activate_output=True)
        self.deconvolutions = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        grid = self.dense(z).reshape(-1, *self.grid)
        return self.deconvolutions(grid).reshape(*batch, *self.image_shape)
