"""The embed stage (moved out of ``grape.features.embed`` by the stages split)."""

from grape.features.embed import CLI_PATHS, Options, run  # noqa: F401
