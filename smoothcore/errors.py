"""One error family for user mistakes.

Anything raised as a :class:`SmoothcoreError` is the user's to fix: the CLI prints its message and hint and exits
non-zero without a traceback. Every other exception is a bug in smoothcore or a plugin and keeps its traceback.
"""

from __future__ import annotations


class SmoothcoreError(Exception):
    """A mistake in what the user asked for or gave us (arguments, files, data)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class ConfigError(SmoothcoreError):
    """A parameter has a value that is not allowed."""


class UnknownNameError(ConfigError):
    """A component name (noise, model, dataset, ...) that no plugin registered."""


class PluginError(SmoothcoreError):
    """A plugin failed while registering or returned something unusable; the message names the plugin."""


class DataError(SmoothcoreError):
    """A dataset or input tensor is missing, corrupt or of the wrong shape or range."""


class CheckpointError(SmoothcoreError):
    """A checkpoint is missing, corrupt, untrusted or does not fit the model."""


class ExperimentError(SmoothcoreError):
    """An experiment folder is in a state that does not allow the requested operation."""
