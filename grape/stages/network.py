"""The network stage (moved out of ``grape.graph.network`` by the stages split)."""

from grape.graph.network import CLI_PATHS, Options, run  # noqa: F401
