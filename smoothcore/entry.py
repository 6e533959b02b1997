"""The ``smoothcore`` console script: Ctrl-C at any moment, even while the command line is still being imported,
ends in one line (status 130), never in a traceback."""

from __future__ import annotations

import os
import signal
import sys


def _early_interrupt(signum: int, frame: object) -> None:
    sys.stderr.write("Interrupted (SIGINT).\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def main() -> None:
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, _early_interrupt)
    from smoothcore.cli import main as run

    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # from here on the commands handle it (cli.interrupted)
    run()


if __name__ == "__main__":
    main()
