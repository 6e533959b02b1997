"""The Makefile's environment step keeps what the user added: a plugin installed into the project's environment
(`uv pip install ./examples/smoothcore-pareto`, as docs/plugins.md says) survives `make env`, and so every `make`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import find_uv

ROOT = Path(__file__).resolve().parents[1]


def test_make_env_keeps_a_plugin_the_user_installed(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock", "Makefile", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for folder in ("smoothcore", "plugins", "denoisers", "examples/smoothcore-pareto"):
        shutil.copytree(
            ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    uv = find_uv()

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    probe = (
        "import importlib.metadata as m; print(sorted(e.name for e in m.entry_points(group='smoothcore')))"
    )
    run("make", "env", f"UV={uv}")
    run(uv, "pip", "install", "--quiet", "--python", ".venv/bin/python", "./examples/smoothcore-pareto")
    assert "pareto" in run(".venv/bin/python", "-c", probe)
    run("make", "env", f"UV={uv}")
    assert "pareto" in run(".venv/bin/python", "-c", probe)
