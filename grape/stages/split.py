"""The split stage (moved out of ``grape.data.split`` by the stages split)."""

from grape.data.split import CLI_PATHS, Options, run  # noqa: F401
