"""Stage commands: one module per pipeline stage (``python -m grape <stage>``).

A stage module declares its file arguments (``FILES``), its options (the dataclass of the
config section(s) it reads) and ``run``, which reads the files, calls the library and
writes the outputs. The library (every other sub-package of ``grape``) never imports
this package or the command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PathArg:
    """A file or directory argument of a stage."""

    help: str
    required: bool = True
    many: bool = False  # one or more paths
