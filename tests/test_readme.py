"""The README's code runs as written: the pair example a newcomer copies first."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block marked readme-example: {name}"
    return match.group(1)


def test_the_readme_pair_example_runs_as_written(capsys):
    namespace: dict = {}
    exec(compile(_example("pair"), "README.md", "exec"), namespace)
    result, metrics = namespace["result"], namespace["metrics"]
    assert result.epochs_completed == 50
    # IWAE_K >= ELBO in expectation; both are means over the same 360 test points, so they
    # are compared within their standard errors
    margin = 3 * (metrics["test_elbo_se"] ** 2 + metrics["test_log_likelihood_se"] ** 2) ** 0.5
    assert metrics["test_log_likelihood"] > metrics["test_elbo"] - margin
    assert "test_log_likelihood" in capsys.readouterr().out
