"""GRAPE: gene-regulation-aware perturbation prediction with a heterogeneous GNN.

The package holds one typed module per pipeline stage (``grape.demo.simulate``,
``grape.annotation.annotate``, ``grape.annotation.describe``, ``grape.features.embed``, ``grape.graph.build``,
``grape.model.train``, ``grape.evaluation.evaluate``, ``grape.evaluation.report``); ``python -m grape <stage>``
runs one of them. Modules import their heavy dependencies themselves, so that a
light stage never imports torch.
"""

__version__ = "0.1.0"
