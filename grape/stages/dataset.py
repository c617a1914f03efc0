"""The dataset stage (moved out of ``grape.io.datasets`` by the stages split)."""

from grape.io.datasets import main  # noqa: F401
