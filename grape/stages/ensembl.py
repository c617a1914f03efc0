"""The ensembl stage (moved out of ``grape.annotation.ensembl`` by the stages split)."""

from grape.annotation.ensembl import CLI_PATHS, Options, main, run  # noqa: F401
