"""GRAPE: gene-regulation-aware perturbation prediction with a heterogeneous GNN.

The package holds one typed module per pipeline stage (``grape.simulate``,
``grape.annotate``, ``grape.describe``, ``grape.embed``, ``grape.graph``,
``grape.train``, ``grape.evaluate``, ``grape.report``); ``python -m grape <stage>``
runs one of them. Modules import their heavy dependencies themselves, so that a
light stage never imports torch.
"""

__version__ = "0.1.0"
