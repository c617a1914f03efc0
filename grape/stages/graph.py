"""The graph stage (moved out of ``grape.graph.build`` by the stages split)."""

from grape.graph.build import CLI_PATHS, Options, run  # noqa: F401
