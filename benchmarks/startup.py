"""Start-up time of the command line (issue 16), in fresh processes: --help of the group and of commands, `plugins`,
`models`, and a one-image certification (what `certify` spends before and around its first forward passes).

    uv run python -m benchmarks.startup [--exe .venv/bin/smoothcore] [--label after] [--run checkpoints/demo]

Run it once per checkout to compare (e.g. `--exe /tmp/before/.venv/bin/smoothcore --label before` for a worktree
of an earlier commit with its own environment); each row is the best and the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import record


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exe", default=".venv/bin/smoothcore")
    parser.add_argument("--label", default="after")
    parser.add_argument("--run", default="checkpoints/demo", help="A trained experiment folder (make demo).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "SMOOTHCORE_LOAD_PLUGINS": ""}
    exe = str(Path(args.exe))
    cases = {
        "smoothcore --help": [exe, "--help"],
        "smoothcore certify --help": [exe, "certify", "--help"],
        "smoothcore train-classifier --help": [exe, "train-classifier", "--help"],
        "smoothcore plugins": [exe, "plugins"],
        "smoothcore models": [exe, "models"],
    }
    if (Path(args.run) / "checkpoint.pt").exists():
        cases["smoothcore certify RUN --limit 1 (DSSN, 441 passes)"] = [
            exe,
            "certify",
            args.run,
            "--limit",
            "1",
            "--tag",
            "startup",
            "--overwrite",
            "--device",
            "cpu",
        ]
    rows = []
    for name, cmd in cases.items():
        times = [timed(cmd, env) for _ in range(args.repeats)]
        rows.append(
            {
                "checkout": args.label,
                "command": name,
                "best s": min(times),
                "median s": statistics.median(times),
            }
        )
        print(rows[-1], flush=True)
    for leftover in Path(args.run).glob("certify_startup.*"):  # the one-image table is not a result to keep
        leftover.unlink()
    record(
        f"Command-line start-up ({args.label})",
        rows,
        f"Fresh processes, {args.repeats} runs each, SMOOTHCORE_LOAD_PLUGINS='' (no third-party plugins).",
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
