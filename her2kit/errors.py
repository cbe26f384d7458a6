"""Errors that the command line turns into one-line messages."""

from __future__ import annotations

import os


class Her2kitError(Exception):
    """An expected failure: the CLI prints it on one line and exits non-zero."""


class InputError(Her2kitError):
    """A file or URL that cannot be used; the message names it and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class PluginError(Her2kitError):
    """A plugin conflict or an unknown plugin name."""


class SetupError(Her2kitError):
    """A problem every input would meet (the model, the scheduler): the run
    stops at once instead of repeating it for each input."""
