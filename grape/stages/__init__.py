"""Stage commands: one module per pipeline stage (``python -m grape <stage>``).

A stage module declares its file arguments (``FILES``), its options (the dataclass of the
config section(s) it reads) and ``run``, which reads the files, calls the library and
writes the outputs; a stage with several steps declares ``COMMANDS`` instead (one
:class:`Command` each). :mod:`grape.cli` builds every command line from these. The
library (every other sub-package of ``grape``) never imports this package or the command
line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PathArg:
    """A file or directory argument of a stage."""

    help: str
    required: bool = True
    many: bool = False  # one or more paths


@dataclass(frozen=True)
class Command:
    """One command of a stage: its file arguments, its options dataclass and the function that runs it.

    A stage with one step declares ``FILES``, ``Options`` and ``run`` at module level; a stage with
    several steps declares ``COMMANDS = {"download": Command(...), ...}`` (``grape <stage> <command>``).
    ``run`` is called as ``run(options=Options(...), **paths)``.
    """

    files: Mapping[str, PathArg]
    options: type
    run: Callable[..., None]
    help: str = ""
