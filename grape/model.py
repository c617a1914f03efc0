"""A heterogeneous GNN that predicts every gene's expression change under a perturbation.

Design (this is the foundation model; the full GRAPE model with graph structure
learning replaces it later):

* a per-node-type encoder maps each gene's features (text embedding, DNA profile,
  control expression) to a hidden state;
* a perturbation embedding, computed from the perturbed gene's own features so that
  genes never perturbed in training still get one, is added at the perturbed node(s)
  (one or two genes; identical in training and prediction);
* ``layers`` rounds of message passing with one weight matrix per relation
  (source type -> target type) over the sparse prior graph;
* a gene-specific decoder (a per-gene vector and bias plus a shared head) reads the
  change from control of every gene.

All conditions of a batch go through one forward pass: hidden states are kept as
``[N, B, hidden]`` and each relation aggregates them with one sparse matrix product
over ``[N, B * hidden]``, so there is neither a Python loop over conditions nor a
dense N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GraphTensors:
    """The graph in global node order, ready for the model (move with :meth:`to`)."""

    features: Tensor  # [N, F]
    node_type: Tensor  # [N] index into node_types
    node_types: tuple[str, ...]
    relations: tuple[tuple[str, str, str], ...]
    adjacency: tuple[Tensor, ...]  # per relation: sparse [N, N] (target, source), rows normalised

    def to(self, device: torch.device | str) -> GraphTensors:
        return GraphTensors(
            features=self.features.to(device),
            node_type=self.node_type.to(device),
            node_types=self.node_types,
            relations=self.relations,
            adjacency=tuple(a.to(device) for a in self.adjacency),
        )

    @property
    def num_nodes(self) -> int:
        return self.features.shape[0]


def normalized_adjacency(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    """Sparse ``[N, N]`` matrix with entry (dst, src) = weight / (sum of dst's incoming weights)."""
    weight = weight.clamp(min=0)
    total = torch.zeros(num_nodes, dtype=weight.dtype).index_add_(0, dst, weight)
    values = weight / total[dst].clamp(min=1e-12)
    return torch.sparse_coo_tensor(
        torch.stack([dst, src]), values, (num_nodes, num_nodes), check_invariants=True
    ).coalesce()


class PerturbationHGNN(nn.Module):
    """Relation-typed message passing with perturbation injection and a gene-specific decoder."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        node_types: tuple[str, ...],
        relations: tuple[tuple[str, str, str], ...],
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.node_types = tuple(node_types)
        self.relations = tuple(relations)
        self.hidden = hidden
        self.encoder = nn.ModuleDict({
            t: nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)) for t in node_types
        })
        self.perturbation = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.relation_weight = nn.ModuleList([
            nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in relations]) for _ in range(layers)
        ])
        self.self_weight = nn.ModuleList([
            nn.ModuleDict({t: nn.Linear(hidden, hidden) for t in node_types}) for _ in range(layers)
        ])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)
        self.gene_weight = nn.Parameter(torch.zeros(num_nodes, hidden))
        self.gene_bias = nn.Parameter(torch.zeros(num_nodes))
        self.head = nn.Linear(hidden, 1)

    def _per_type(self, modules: nn.ModuleDict, x: Tensor, node_type: Tensor) -> Tensor:
        out = None
        for i, t in enumerate(self.node_types):
            mask = node_type == i
            y = modules[t](x[mask])
            if out is None:
                out = x.new_zeros((*x.shape[:-1], y.shape[-1]))
            out[mask] = y
        return out

    def forward(self, graph: GraphTensors, perturbed: Tensor) -> Tensor:
        """Predicted change from control, ``[B, N]``.

        ``perturbed`` is ``[B, P]`` global node ids of each condition's perturbed genes,
        padded with -1 (P = 2 covers singles and doubles).
        """
        n, b = graph.num_nodes, perturbed.shape[0]
        base = self._per_type(self.encoder, graph.features, graph.node_type)  # [N, h]
        indicator = torch.zeros(b, n, device=base.device, dtype=base.dtype)
        indicator.scatter_add_(1, perturbed.clamp(min=0), (perturbed >= 0).to(base.dtype))
        pert = self.perturbation(graph.features)  # [N, h]
        h = base.unsqueeze(1) + indicator.T.unsqueeze(-1) * pert.unsqueeze(1)  # [N, B, h]
        for weights, self_w, norm in zip(self.relation_weight, self.self_weight, self.norms):
            flat = h.reshape(n, b * self.hidden)
            message = h.new_zeros(n, b, self.hidden)
            for adj, lin in zip(graph.adjacency, weights):
                message = message + lin(torch.sparse.mm(adj, flat).reshape(n, b, self.hidden))
            update = self._per_type(self_w, h, graph.node_type) + message
            h = norm(h + self.dropout(nn.functional.gelu(update)))
        delta = (h * self.gene_weight.unsqueeze(1)).sum(-1) + self.head(h).squeeze(-1) + self.gene_bias.unsqueeze(1)
        return delta.T
