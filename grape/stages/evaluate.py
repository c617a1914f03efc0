"""The evaluate stage (moved out of ``grape.evaluation.evaluate`` by the stages split)."""

from grape.evaluation.evaluate import CLI_PATHS, Options, run  # noqa: F401
