"""The preflight stage (moved out of ``grape.data.preflight`` by the stages split)."""

from grape.data.preflight import CLI_PATHS, Options, run  # noqa: F401
