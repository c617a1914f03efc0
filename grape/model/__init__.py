"""The GRAPE model (heterogeneous GNN with graph structure learning) and its training."""
