"""Pool several ``compare_vae.py`` result files into one estimate over all their seeds.

The test log-likelihood of a 100-epoch run varies from run to run by about a
nat, with the data, the initial weights and the reparameterization noise, so
the mean of a few seeds has a standard error comparable to the 0.5-nat quality
bar. Pooling runs over more seeds gives the mean difference (ours - plain)
with its standard error.

    python -m bench.pool_vae_results bench/results/vae_vs_pytorch.json \\
        bench/results/vae_vs_pytorch_seeds345.json --out bench/results/vae_vs_pytorch_pooled.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def pool(paths: list[Path]) -> dict:
    """Per-seed rows and the pooled mean difference of all ``paths`` (seeds must not repeat)."""
    rows = []
    for path in paths:
        for entry in json.loads(path.read_text())["per_seed"]:
            rows.append(
                {
                    "seed": entry["seed"],
                    "ours": entry["ours"]["test_log_likelihood"],
                    "plain": entry["plain"]["test_log_likelihood"],
                    "diff": entry["diff_test_log_likelihood"],
                    "source": path.name,
                }
            )
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears in more than one file: {sorted(seeds)}")
    diffs = [r["diff"] for r in rows]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    return {
        "rows": sorted(rows, key=lambda r: r["seed"]),
        "mean_diff": mean,
        "sd_diff": sd,
        "se_diff": sd / math.sqrt(n),
        "mean_ours": sum(r["ours"] for r in rows) / n,
        "mean_plain": sum(r["plain"] for r in rows) / n,
        "num_seeds": n,
    }


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# pyro-aevb VAE vs plain PyTorch, pooled over seeds",
        "",
        "Test log-likelihood (K = 1000), nats per data point; per-seed runs from the files named.",
        "",
        "| seed | LL ours | LL plain | diff (ours - plain) | file |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r['seed']}", f"{r['ours']:.2f}", f"{r['plain']:.2f}", f"{r['diff']:+.2f}"]
        lines.append("| " + " | ".join([*cells, r["source"]]) + " |")
    lines += [
        f"| **mean** | **{result['mean_ours']:.2f}** | **{result['mean_plain']:.2f}** | "
        f"**{result['mean_diff']:+.2f} ± {result['se_diff']:.2f}** (s.e.) | |",
        "",
        f"{result['num_seeds']} seeds; standard deviation of the per-seed difference "
        f"{result['sd_diff']:.2f} nats.",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="compare_vae.py JSON files")
    parser.add_argument("--out", type=Path, help="write the table here (Markdown) and JSON beside")
    args = parser.parse_args()
    result = pool(args.results)
    command = "python -m bench.pool_vae_results " + " ".join(str(p) for p in args.results)
    if args.out:
        command += f" --out {args.out}"
    text = to_markdown(result, command)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
