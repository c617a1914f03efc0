"""The describe stage (moved out of ``grape.annotation.describe`` by the stages split)."""

from grape.annotation.describe import CLI_PATHS, Options, run  # noqa: F401
