"""The annotate stage (moved out of ``grape.annotation.annotate`` by the stages split)."""

from grape.annotation.annotate import CLI_PATHS, Options, run  # noqa: F401
