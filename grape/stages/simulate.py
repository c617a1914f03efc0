"""The simulate stage (moved out of ``grape.demo.simulate`` by the stages split)."""

from grape.demo.simulate import CLI_PATHS, Options, run  # noqa: F401
