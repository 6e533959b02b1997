"""The README's "From Python" example runs as written (with a trained model in place of the demo's)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs_and_certifies_what_it_says(trained_run, monkeypatch, capsys):
    code = _python_example()
    assert "checkpoints/demo/checkpoint.pt" in code
    monkeypatch.chdir(ROOT)  # the example finds Fashion-MNIST where `make data` puts it
    scope: dict = {}
    exec(
        compile(
            code.replace("checkpoints/demo/checkpoint.pt", str(trained_run / "checkpoint.pt")),
            "README",
            "exec",
        ),
        scope,
    )
    result, mc_result = scope["result"], scope["mc_result"]
    assert result.counts.shape == (4, 10) and (result.counts.sum(1) == 441).all()
    assert torch.equal(scope["prediction"], result.prediction) and torch.equal(scope["radius"], result.radius)
    assert mc_result.prediction.shape == (4,) and scope["labels"].tolist() == [
        int(scope["test_set"][i][1]) for i in scope["idx"]
    ]
    assert "ACR" in capsys.readouterr().out
