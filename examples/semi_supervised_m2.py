"""Semi-supervised VAE (M2, Kingma et al., 2014) written as Pyro's ss_vae_M2 writes it,
fitted with pyro_aevb on the bundled MNIST subset with 100 labels.

    python examples/semi_supervised_m2.py --epochs 30

The pair is plain Pyro: ``model(xs, ys=None)`` and ``guide(xs, ys=None)`` methods of
one ``nn.Module``, a ``pyro.plate("data")`` without a size, the label observed where
it is given and enumerated (``@config_enumerate``) where it is not, and the auxiliary
classification term ``alpha * log q(y | x)`` on labeled points that M2 adds (Kingma et
al., 2014, eq. 9). pyro_aevb keeps each batch labeled or unlabeled (labels missing as
NaN rows of :func:`pyro_aevb.arguments.one_hot`), scales each batch to the full data set
and trains the per-data-point objective with ``TraceEnum_ELBO``.

Prints the test ELBO (nats per data point, labels summed out) and the test accuracy of
the classifier ``q(y | x)``.
"""

from __future__ import annotations

import argparse
import json

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import nn

import pyro_aevb
from pyro_aevb.arguments import one_hot
from pyro_aevb.data import load_mnist_subset

CLASSES = 10


def mlp(sizes, last=None):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Softplus()]
    layers = layers[:-1] + ([last] if last is not None else [])
    return nn.Sequential(*layers)


def broadcast_cat(*tensors):
    """Concatenate on the last dim after broadcasting the others (an enumerated label
    has a leading enumeration dim the data do not)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class SSVAE(nn.Module):
    def __init__(self, x_dim=784, z_dim=50, hidden=500, aux_loss_multiplier=46.0):
        super().__init__()
        self.z_dim, self.alpha = z_dim, aux_loss_multiplier
        self.encoder_y = mlp([x_dim, hidden, CLASSES], nn.Softmax(-1))
        self.encoder_z = mlp([x_dim + CLASSES, hidden, 2 * z_dim])
        self.decoder = mlp([z_dim + CLASSES, hidden, x_dim])

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size, labeled = xs.size(0), ys is not None
        with pyro.plate("data"):
            prior_z = dist.Normal(xs.new_zeros(batch_size, self.z_dim), 1.0).to_event(1)
            zs = pyro.sample("z", prior_z)
            alpha_prior = xs.new_ones(batch_size, CLASSES) / CLASSES
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            logits = self.decoder(broadcast_cat(zs, ys))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)
            if labeled:
                # the classifier's term on labeled points (M2's alpha-weighted log q(y|x))
                with poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    @config_enumerate
    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(broadcast_cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.clamp(-8, 4).exp()).to_event(1))

    def classify(self, xs):
        return self.encoder_y(xs).argmax(-1)


def hundred_labels(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels with all but 10 per class set missing (-1), the 10 drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    kept = torch.full_like(labels, -1)
    for c in range(CLASSES):
        where = (labels == c).nonzero().flatten()
        pick = where[torch.randperm(where.numel(), generator=g)[:10]]
        kept[pick] = c
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train, test = load_mnist_subset()
    train, test = train.flat(), test.flat()
    ys = one_hot(hundred_labels(train.y, args.seed), CLASSES)  # 100 rows one-hot, rest NaN
    torch.manual_seed(args.seed)
    vae = SSVAE()
    result = pyro_aevb.fit(
        vae.model,
        vae.guide,
        {"xs": train.x, "ys": ys},
        {"xs": test.x},
        transform="dynamic",
        objective="enum",
        epochs=args.epochs,
        batch_size=100,
        lr=1e-3,
        seed=args.seed,
        progress=False,
    )
    with torch.no_grad():
        accuracy = float((vae.classify(test.x) == test.y).float().mean())
    report = {
        "epochs": args.epochs,
        "labels": 100,
        "test_elbo": result.history[-1]["test_elbo"],
        "train_elbo": result.history[-1]["train_elbo"],
        "test_accuracy": accuracy,
        "train_seconds": round(result.train_seconds, 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
