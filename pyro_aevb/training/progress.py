"""What a fit shows while it runs: a bar on a terminal, a line per epoch in a log."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A tqdm bar on a terminal; one plain line per epoch when stderr is redirected
    (a bar's carriage-return updates would fill a log file)."""

    def __init__(self, enabled: bool, total: int, epochs: int):
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.epochs = epochs
        self.bar = tqdm(total=total, disable=not self.terminal, desc="fit", dynamic_ncols=True)

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def epoch(self, epoch: int, loss: float, row: dict | None) -> None:
        """After an epoch of mean training loss ``loss`` (nats per data point)."""
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.2f}")
        if self.lines:
            text = f"epoch {epoch}/{self.epochs}  train ELBO {-loss:.2f}"
            if row is not None and "test_elbo" in row:
                text += f"  test ELBO {row['test_elbo']:.2f}"
            print(text + " (nats per data point)", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
