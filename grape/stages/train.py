"""The train stage (moved out of ``grape.model.train`` by the stages split)."""

from grape.model.train import CLI_PATHS, Options, run  # noqa: F401
