"""The ``smoothcore`` command line: the click group, its error handling, and the built-in commands.

Commands only parse options, call the library and render (:mod:`smoothcore.cli_render`); each lives in a
``cli_*`` module and is added here, directly. Plugins add theirs through the ``register_commands`` hook.
User mistakes (:class:`smoothcore.SmoothcoreError`) print a message and a hint and exit with status 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import click

from smoothcore.cli_attack import attack_cmd
from smoothcore.cli_audit import audit_cmd
from smoothcore.cli_certify import certify_cmd
from smoothcore.cli_render import err_console, fail
from smoothcore.cli_report import report_cmd, sweep_cmd
from smoothcore.cli_setup import fetch_data_cmd, models_cmd, plugins_cmd
from smoothcore.cli_train import train_classifier_cmd, train_denoiser_cmd
from smoothcore.errors import SmoothcoreError


class SmoothcoreGroup(click.Group):
    """A click group that adds plugin commands on first use and turns user errors into clean messages."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if SmoothcoreGroup._plugins_loaded:
            return
        SmoothcoreGroup._plugins_loaded = True
        from smoothcore.plugins import components

        components().manager.hook.register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        from smoothcore.plugins import third_party_plugins

        if (
            third_party_plugins()
        ):  # only they can add commands (loading plugins imports torch: not for --help)
            self._safe_load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        if name not in self.commands:
            self._safe_load()
        return super().get_command(ctx, name)

    def _safe_load(self) -> None:
        try:
            self._load_plugin_commands()
        except SmoothcoreError as exc:
            fail(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SmoothcoreError as exc:
            fail(exc)
        except KeyboardInterrupt:
            interrupted(ctx.invoked_subcommand)
        except OSError as exc:  # the file system refused: read-only, full, a file where a folder should be
            fail(
                SmoothcoreError(
                    os_error_text(exc), hint="check that the path exists, is writable and has room"
                )
            )
        except Exception:
            # an interrupt that landed inside an import can surface as another error (a half-imported module):
            # once a signal arrived, whatever follows is its consequence
            if _SIGNALLED[0] is not None:
                interrupted(ctx.invoked_subcommand)
            raise


RESUME_HINTS = {
    "certify": "rerun the same command with --resume: finished images are kept",
    "train-classifier": "rerun the same command with --resume: it continues from the last save",
    "train-denoiser": "rerun the same command with --resume: it continues from the last save",
    "sweep": "rerun the same sweep: it continues what was interrupted",
}


def interrupted(command: str | None) -> None:
    """Ctrl-C or a termination signal: one line saying how to go on, status 128 + the signal."""
    signum = _SIGNALLED[0] or signal.SIGINT
    err_console.print(f"[bold red]Interrupted[/] ({signal.Signals(signum).name}).", highlight=False)
    if command in RESUME_HINTS:
        err_console.print(f"[yellow]Hint:[/] {RESUME_HINTS[command]}", highlight=False, soft_wrap=True)
    sys.exit(128 + signum)


def os_error_text(exc: OSError) -> str:
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else ""
    return f"{where + ': ' if where else ''}{exc.strerror or exc}"


_SIGNALLED: list[int | None] = [None]


def _terminate(signum: int, frame: Any) -> None:
    """Ctrl-C, or SIGTERM (a scheduler preempting the job), ends the run: finished work is kept. The signal is
    remembered, so that an error it causes is reported as the interruption it is. Inside an import nothing has
    been done yet, and an exception raised there can abort the process from C++ (torch's pybind11 callbacks):
    then the process ends at once, with the same one line."""
    _SIGNALLED[0] = signum
    if _importing(frame):
        sys.stderr.write(f"Interrupted ({signal.Signals(signum).name}).\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    raise KeyboardInterrupt


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import (a frame of importlib's bootstrap is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@click.group(
    cls=SmoothcoreGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(package_name="smoothcore")
def cli() -> None:
    """Certified L1 robustness by randomized and derandomized smoothing (uniform, SSN, DSSN, Gaussian, Laplace),
    with denoised smoothing. Train smoothed classifiers, certify test sets, compare certified-accuracy curves."""


for _command in (
    plugins_cmd,
    train_classifier_cmd,
    train_denoiser_cmd,
    certify_cmd,
    report_cmd,
    sweep_cmd,
    audit_cmd,
    attack_cmd,
    fetch_data_cmd,
    models_cmd,
):
    cli.add_command(_command)


def main() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
    try:
        cli(prog_name="smoothcore")
    except (
        KeyboardInterrupt
    ):  # between the group's own handling and the end (e.g. while a command is looked up)
        interrupted(None)
    except Exception:
        if _SIGNALLED[0] is not None:
            interrupted(None)
        raise
    finally:
        try:
            sys.stdout.flush()
        except OSError:  # stdout is full or closed (a pipe to /dev/full): nothing more can be said there
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
