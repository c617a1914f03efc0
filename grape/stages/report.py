"""The report stage (moved out of ``grape.evaluation.report`` by the stages split)."""

from grape.evaluation.report import CLI_PATHS, Options, run  # noqa: F401
