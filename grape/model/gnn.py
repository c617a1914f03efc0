"""GRAPE: a heterogeneous GNN with graph structure learning that predicts every gene's
expression change under the perturbation of one or two genes.

The parts, following GRAPE (arXiv 2505.03853), with the sparse and batched forms that
let a full transcriptome fit:

* **Multimodal encoder.** Each modality (text embedding, DNA profile) goes through its
  own MLP with a linear residual and a LayerNorm; the modalities are fused per gene by
  attention (a learned query scores each modality's tanh projection), then a node-type
  embedding and the gene's expression context (control level, measured flag) are added.
  :meth:`GRAPE.alignment_loss` is the optional contrastive (InfoNCE, both directions)
  alignment of the text and DNA encoders, used as pretraining.
* **Graph structure learning.** A GCN over the prior graph (row-normalised, with self
  loops) gives one view per layer; each view is scored by multi-head weighted cosine
  similarity; the layers are fused by channel attention (squeeze: a view's mean pairwise
  similarity, which is the squared norm of its mean unit vector, so no N x N matrix;
  excite: a linear layer and a softmax). The fused similarity is a dot product of
  concatenated scaled unit vectors, so each gene's ``gsl_k`` most similar genes are found
  by the chunked top-k search of :func:`grape.graph.build.topk_similar`, in training every
  ``gsl_refresh`` steps (the one cost quadratic in N; validation during training reuses the
  last training search, :meth:`GRAPE.training_graph`); the selected edges' similarities are
  recomputed with gradients on every pass (a sampled sparse product, SDDMM). The learned graph is mixed with the
  prior, ``gsl_prior_weight * prior + (1 - gsl_prior_weight) * learned`` (each row
  normalised), and a regulariser pulls the similarity toward the prior: the squared error
  to the prior weight on prior edges and to 0 on as many random pairs (a sampled
  estimate of ``||S - A||^2``).
* **Heterogeneous message passing.** One relation per (source type, target type) pair
  (coding->coding, coding->noncoding, noncoding->coding, noncoding->noncoding by default).
  Each layer has, per relation, its own GATv2-style attention parameters and message
  weights, plus a per-type root weight. Attention is computed from the genes'
  condition-independent states, so a layer's attention is one regulatory graph shared by
  all conditions (and exportable); it is normalised over all incoming edges of a gene, with
  the edge's graph weight as a prior (``+ log w``). Condition states ``[N, S, hidden]``
  then flow through one CSR product for all relations over ``[N, S * hidden]`` (its
  backward sparse as well, :class:`Aggregation`: a block per relation over the nodes of its
  target type), then each target type's root and message weights as matrix products on
  contiguous blocks: no loop over conditions, no dense N x N matrix, no layout copy of the states.
* **Perturbations.** A perturbation embedding computed from the perturbed gene's own
  encoded features (so genes never perturbed in training get one) is added at the
  perturbed node; its sum over the condition's genes also reaches every gene through a
  per-gene gate (effects off the graph). The same function runs in training and
  prediction, for one or two genes.
* **Doubles.** ``doubles="additive"``: the prediction is the sum of the two singles'
  effects plus a learned interaction correction read, per gene, from the graph's
  non-additive part of the states (both injected, minus each alone, plus none) and the
  two single effects; the correction's output layer starts at zero. A single's effect is
  the model's prediction, or, with ``observed_singles``, its observed change when that
  single was a training or validation condition of the same cell state (stored as
  buffers by :meth:`GRAPE.set_observed_singles`; measured genes only), so the additive baseline is
  exactly the model with a zero correction, and the model learns where doubles depart
  from it. Singles themselves are
  always predicted by the network. ``doubles="joint"``: both genes are injected at once
  and the double is read like a single.
* **Singles.** ``singles="kernel"``: a single's change is a kernel mean of the observed changes
  of the fitting singles of its cell state (never itself), with weights from the two genes'
  raw features' cosine similarity and their prior-graph edge
  (:meth:`GRAPE.kernel`); at the perturbed gene itself, a learned gate toward the same weighted
  mean of the fitting singles' changes of their own target gene; plus the network's output as a
  correction. The weights start uniform, the gate and the decoder's output at zero, so the model
  starts as the mean baseline of singles and learns where an unseen gene departs from it.
  ``singles="network"`` (default): the network alone.
* **Decoder.** Gene-specific: each gene's final state dotted with its own vector, plus a
  shared head and a per-gene bias, gives the change from control.
* **Cell states (contexts).** A screen with several cell states (stimulated and
  unstimulated cells) is one model: a forward pass reads one state, ``context=k``, whose
  expression context (that state's control level of every gene) enters the encoder, and
  whose fitting singles are the observed singles of its doubles. With one state the model
  is exactly the one-state model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import softmax as segment_softmax

from grape.graph.build import topk_similar
from grape.variants import MODALITIES
from grape.options import options_class

DOUBLES = ("additive", "joint")
SINGLES = ("kernel", "network")
KERNEL_SCALE = 10.0  # the kernel's coefficients act times this: Adam's steps move them ten times faster


@dataclass(frozen=True)
class GraphTensors:
    """The graph in global node order, ready for the model (move with :meth:`to`)."""

    modalities: dict[str, Tensor]  # modality -> [N, D_m]
    context: Tensor  # [N, C] expression context of each gene, or [K, N, C] for K cell states
    node_type: Tensor  # [N] index into node_types
    node_types: tuple[str, ...]
    edge_index: Tensor  # [2, E] prior edges (source, target), global ids
    edge_weight: Tensor  # [E] positive prior weights

    def to(self, device: torch.device | str) -> GraphTensors:
        return GraphTensors(
            modalities={k: v.to(device) for k, v in self.modalities.items()},
            context=self.context.to(device),
            node_type=self.node_type.to(device),
            node_types=self.node_types,
            edge_index=self.edge_index.to(device),
            edge_weight=self.edge_weight.to(device),
        )

    @property
    def num_nodes(self) -> int:
        return self.node_type.shape[0]

    @property
    def num_contexts(self) -> int:
        """Number of cell states (contexts) whose expression context the graph carries."""
        return 1 if self.context.dim() == 2 else self.context.shape[0]

    @property
    def context_dim(self) -> int:
        return self.context.shape[-1]

    def context_of(self, context: int = 0) -> Tensor:
        """The ``[N, C]`` expression context of cell state ``context``."""
        if self.context.dim() == 2:
            if context != 0:
                raise IndexError(f"context {context} asked of a graph with one context")
            return self.context
        return self.context[context]

    @property
    def relations(self) -> tuple[tuple[str, str, str], ...]:
        """Relation r = source type * T + target type."""
        return tuple((s, "to", d) for s in self.node_types for d in self.node_types)

    def relation_of(self, src: Tensor, dst: Tensor) -> Tensor:
        return self.node_type[src] * len(self.node_types) + self.node_type[dst]


#: The train options (config section ``train``) that are the model's architecture: :class:`ModelConfig`
#: has these fields, with the schema's defaults and help (``train.Options.model_config`` copies them).
MODEL_OPTIONS = ("hidden", "layers", "dropout", "modalities", "gsl", "gsl_layers", "gsl_heads", "gsl_k",
                 "gsl_prior_weight", "gsl_refresh", "global_context", "doubles", "singles", "observed_singles",
                 "temperature", "dropout_shared")


@dataclass(frozen=True)
class ModelConfig(options_class("train", keys=MODEL_OPTIONS, tuples=("modalities",), name="ModelSection")):
    """Architecture of :class:`GRAPE`: the train options of :data:`MODEL_OPTIONS` (``modalities`` a
    tuple; a list is made one), plus internal constants that are no configuration key."""

    gsl_chunk_size: int = 4096  # internal: rows per block of the learned graph's top-k search (memory, not results)
    attention_hidden: int = 32  # internal: width of the message-passing layers' GATv2-style attention per relation

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))  # model.yaml and the options hold a list
        if self.doubles not in DOUBLES:
            raise ValueError(f"doubles must be one of {', '.join(DOUBLES)}, not {self.doubles!r}")
        if self.singles not in SINGLES:
            raise ValueError(f"singles must be one of {', '.join(SINGLES)}, not {self.singles!r}")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {', '.join(MODALITIES)}: {self.modalities}")


def row_normalized(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    """``weight / (sum of the target's incoming weights)``, per edge (differentiable)."""
    total = torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device).index_add(0, dst, weight)
    return weight / total[dst].clamp(min=1e-12)


def normalized_adjacency(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    """Sparse ``[N, N]`` matrix with entry (dst, src) = weight / (sum of dst's incoming weights)."""
    weight = weight.clamp(min=0)
    values = row_normalized(src, dst, weight, num_nodes)
    return torch.sparse_coo_tensor(
        torch.stack([dst, src]), values, (num_nodes, num_nodes), check_invariants=True
    ).coalesce()


def coalesce_edges(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sum the weights of repeated (src, dst) pairs (differentiable in ``weight``)."""
    key = dst * num_nodes + src
    unique, inverse = torch.unique(key, return_inverse=True)
    summed = weight.new_zeros((len(unique), *weight.shape[1:])).index_add(0, inverse, weight)
    return unique % num_nodes, unique // num_nodes, summed


def canonical_sets(perturbed: Tensor) -> Tensor:
    """Rows of perturbed node ids sorted ascending with the -1 padding last (gene order is irrelevant)."""
    big = torch.iinfo(perturbed.dtype).max
    keyed = torch.where(perturbed < 0, torch.full_like(perturbed, big), perturbed)
    keyed = keyed.sort(dim=1).values
    return torch.where(keyed == big, torch.full_like(keyed, -1), keyed)


@dataclass(frozen=True)
class Aggregation:
    """CSR plan of ``out[row(rel, dst)] += value * x[src]`` over a fixed edge list (built once per graph).

    Rows come in one block per relation (relation-major); relation ``rel`` = source type * T +
    target type has a row for each node of its target type, in type order
    (``block_offset[rel] + type_rank[dst]``), so its output is one contiguous block and no row of
    a block is empty by construction (``T * N`` rows in all, not ``R * N``). ``order`` puts the
    edges in CSR order (by row, then source); the transpose (rows: sources) serves the gradient
    with respect to ``x``. Node types: ``type_order`` lists the nodes grouped by type
    (``type_counts`` of each), ``type_inverse`` undoes it.
    """

    num_nodes: int
    num_relations: int
    crow: Tensor
    col: Tensor
    order: Tensor
    t_crow: Tensor
    t_col: Tensor
    t_order: Tensor
    type_order: Tensor
    type_counts: tuple[int, ...]
    type_inverse: Tensor
    block_sizes: tuple[int, ...]  # rows of each relation's block: the node count of its target type
    type_rank: Tensor  # [N] position of each node among the nodes of its type

    @property
    def num_rows(self) -> int:
        return sum(self.block_sizes)

    def rows(self, relation: Tensor, dst: Tensor) -> Tensor:
        """The output row of each (relation, target) pair."""
        offset = torch.tensor((0, *self.block_sizes[:-1]), device=dst.device).cumsum(0)
        return offset[relation] + self.type_rank[dst]


def aggregation_plan(src: Tensor, dst: Tensor, relation: Tensor, num_nodes: int, num_relations: int,
                     node_type: Tensor, num_types: int) -> Aggregation:
    """The :class:`Aggregation` of edges ``src -> dst`` (unique pairs) of relation ``relation``
    (source type * ``num_types`` + target type)."""
    type_order = torch.argsort(node_type, stable=True)
    counts = tuple(torch.bincount(node_type, minlength=num_types).tolist())
    type_inverse = torch.argsort(type_order)
    starts = torch.tensor((0, *counts[:-1]), device=src.device).cumsum(0)
    type_rank = type_inverse - starts[node_type]
    blocks = tuple(counts[r % num_types] for r in range(num_relations))
    empty = Aggregation(num_nodes, num_relations, *(src[:0],) * 6, type_order, counts, type_inverse, blocks,
                        type_rank)
    if len(dst) and bool((relation % num_types != node_type[dst]).any()):
        raise ValueError("aggregation_plan: a relation's target type (relation % types) differs from its edge's")
    row = empty.rows(relation, dst)
    rows = empty.num_rows
    order = torch.argsort(row * num_nodes + src)
    crow = torch.zeros(rows + 1, dtype=torch.long, device=src.device)
    crow[1:] = torch.bincount(row, minlength=rows).cumsum(0)
    t_order = torch.argsort(src * rows + row)
    t_crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=src.device)
    t_crow[1:] = torch.bincount(src, minlength=num_nodes).cumsum(0)
    return dataclasses.replace(empty, crow=crow, col=src[order], order=order, t_crow=t_crow, t_col=row[t_order],
                               t_order=t_order)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR matrix from a valid plan (no invariant check; torch's "beta" notice silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _spmm(a: Tensor, x: Tensor) -> Tensor:
    """CSR ``a`` times dense ``x`` into a fresh tensor (no zero fill and copy of the output)."""
    if a.device.type != "cpu":
        return torch.sparse.mm(a, x)
    return torch.mm(a, x.contiguous(), out=x.new_empty(a.shape[0], x.shape[1]))


class _Aggregate(torch.autograd.Function):
    """Sparse product of the edge values (CSR, :class:`Aggregation`) with ``x [N, F]``: ``[plan.num_rows, F]``.

    Backward: ``A^T @ grad`` for ``x`` and the sampled product (SDDMM) at the edges for the
    values, so no dense ``N x N`` matrix is ever formed (the COO ``torch.sparse.mm`` forms one
    for the gradient of its values).
    """

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, plan: Aggregation) -> Tensor:
        rows = plan.num_rows
        a = _csr(plan.crow, plan.col, values[plan.order], (rows, plan.num_nodes))
        ctx.save_for_backward(values, x)
        ctx.plan = plan
        return _spmm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, x = ctx.saved_tensors
        plan: Aggregation = ctx.plan
        rows = plan.num_rows
        grad = grad.contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            at = _csr(plan.t_crow, plan.t_col, values[plan.t_order], (plan.num_nodes, rows))
            grad_x = _spmm(at, grad)
        if ctx.needs_input_grad[0]:
            pattern = _csr(plan.crow, plan.col, values.new_zeros(len(values)), (rows, plan.num_nodes))
            sampled = torch.sparse.sampled_addmm(pattern, grad, x.T, beta=0.0).values()
            grad_values = torch.empty_like(values).index_copy_(0, plan.order, sampled)
        return grad_values, grad_x, None


def aggregate(values: Tensor, x: Tensor, plan: Aggregation) -> Tensor:
    """``out [plan.num_rows, F]`` with ``out[plan.rows(rel, dst)] = sum of value * x[src]`` over the plan's edges."""
    return _Aggregate.apply(values, x, plan)


class _EdgeDot(torch.autograd.Function):
    """``<u[src_e], u[dst_e]>`` per edge by a sampled product (SDDMM) on a CSR pattern of the edges.

    Backward: ``grad_u = G @ u + G^T @ u`` with ``G`` the sparse matrix of the edges' output
    gradients; no ``[E, D]`` gathers of the vectors.
    """

    @staticmethod
    def forward(ctx, u: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        n = u.shape[0]
        order = torch.argsort(dst * n + src)
        crow = torch.zeros(n + 1, dtype=torch.long, device=u.device)
        crow[1:] = torch.bincount(dst, minlength=n).cumsum(0)
        pattern = _csr(crow, src[order], u.new_zeros(len(src)), (n, n))
        sampled = torch.sparse.sampled_addmm(pattern, u, u.T, beta=0.0).values()
        ctx.save_for_backward(u, crow, src[order], dst[order], order)
        return torch.empty_like(sampled).index_copy_(0, order, sampled)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, crow, col, row, order = ctx.saved_tensors
        n = u.shape[0]
        g = grad[order].contiguous()
        forward = _csr(crow, col, g, (n, n))  # entry (dst, src): grad_u[dst] += g * u[src]
        t_order = torch.argsort(col * n + row)
        t_crow = torch.zeros(n + 1, dtype=torch.long, device=u.device)
        t_crow[1:] = torch.bincount(col, minlength=n).cumsum(0)
        backward = _csr(t_crow, row[t_order], g[t_order], (n, n))  # grad_u[src] += g * u[dst]
        return _spmm(forward, u) + _spmm(backward, u), None, None


def edge_dot(u: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``(u[src] * u[dst]).sum(-1)`` per pair (differentiable in ``u``)."""
    if len(src) == 0:
        return u.new_zeros(0)
    return _EdgeDot.apply(u, src, dst)


@dataclass(frozen=True)
class Structure:
    """The message-passing graph of one forward pass."""

    src: Tensor
    dst: Tensor
    weight: Tensor  # combined, row-normalised weight (carries gradients from the learner)
    relation: Tensor
    graph_loss: Tensor  # regulariser toward the prior (0 without GSL)
    learned: Tensor  # bool: edge proposed by the structure learner
    plan: Aggregation | None = None  # CSR plan of the edges (None: built on use)


class ModalityEncoder(nn.Module):
    """MLP with a linear residual and a LayerNorm."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.skip = nn.Linear(in_dim, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.mlp(x) + self.skip(x))


class StructureLearner(nn.Module):
    """GCN views of the prior graph, multi-head cosine per view, channel attention, top-k."""

    def __init__(self, hidden: int, *, layers: int, heads: int, k: int, chunk_size: int, refresh: int = 1) -> None:
        super().__init__()
        self.k, self.heads, self.chunk_size, self.refresh = k, heads, chunk_size, max(1, refresh)
        # selected edges: key -> [index, forwards since the search] (training) or (version, index) (eval)
        self._train_index: dict = {}
        self._eval_index: dict = {}
        self.reuse_training_search = False  # evaluation takes the training's edges (GRAPE.training_graph)
        self.gcn = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.head_weight = nn.Parameter(1.0 + 0.1 * torch.randn(layers, heads, hidden))
        self.channel = nn.Linear(layers, layers)
        nn.init.zeros_(self.channel.weight)
        nn.init.zeros_(self.channel.bias)

    def embed(self, h0: Tensor, graph: GraphTensors) -> Tensor:
        """Per-gene vectors ``U`` whose dot products are the fused similarity, ``[N, L*K*h]``."""
        n = graph.num_nodes
        loops = torch.arange(n, device=h0.device)
        src = torch.cat([graph.edge_index[0], loops])
        dst = torch.cat([graph.edge_index[1], loops])
        weight = torch.cat([graph.edge_weight.clamp(min=0), torch.ones(n, device=h0.device)])
        adj = normalized_adjacency(src, dst, weight, n)
        x, views, squeeze = h0, [], []
        for layer, lin in enumerate(self.gcn):
            x = nn.functional.gelu(torch.sparse.mm(adj, lin(x)))
            unit = nn.functional.normalize(x.unsqueeze(1) * self.head_weight[layer], dim=-1)  # [N, K, h]
            views.append(unit)
            # mean over all pairs (i, j) of <u_i, u_j> = |mean_i u_i|^2, averaged over heads
            squeeze.append((unit.mean(0) ** 2).sum(-1).mean())
        alpha = torch.softmax(self.channel(torch.stack(squeeze)), dim=0)
        return torch.cat([(v * (alpha[i] / self.heads).sqrt()).reshape(n, -1) for i, v in enumerate(views)], dim=1)

    def select(self, u: Tensor, key: tuple = (), version: tuple | None = None) -> Tensor:
        """Each gene's ``k`` most similar genes, ``[N, k]``: the chunked top-k search, or the cached one.

        In training the search runs on the first forward pass of ``key`` (graph and cell state) and
        then every ``refresh`` passes; in between the edges stay, their similarities (and so
        the gradients) come from the current vectors. In evaluation a search is reused while
        ``version`` (the parameters' in-place versions) is unchanged, i.e. until the next update;
        with ``reuse_training_search`` (and ``refresh`` above 1) evaluation takes the edges of the
        last training search of ``key`` instead, the graph the next training step would use.
        """
        if self.training:
            entry = self._train_index.get(key)
            if entry is None or entry[1] >= self.refresh or entry[0].shape[0] != u.shape[0]:
                entry = [topk_similar(u.detach(), self.k, chunk_size=self.chunk_size)[0], 0]
                self._train_index = {**{k: v for k, v in self._train_index.items() if k[:1] == key[:1]}, key: entry}
            entry[1] += 1
            return entry[0]
        if self.reuse_training_search and self.refresh > 1:
            entry = self._train_index.get(key)
            if entry is not None and entry[0].shape[0] == u.shape[0]:
                return entry[0]
        cached = self._eval_index.get(key)
        if version is not None and cached is not None and cached[0] == version and cached[1].shape[0] == u.shape[0]:
            return cached[1]
        index = topk_similar(u.detach(), self.k, chunk_size=self.chunk_size)[0]
        self._eval_index = {key: (version, index)} if version is not None else {}
        return index

    def forward(self, h0: Tensor, graph: GraphTensors, *, key: tuple = (), version: tuple | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Learned edges (src, dst), their similarity (with gradients) and the prior regulariser."""
        u = self.embed(h0, graph)
        n = graph.num_nodes
        with torch.no_grad():
            index = self.select(u, key, version)
        dst = torch.arange(n, device=u.device).repeat_interleave(index.shape[1])
        src = index.reshape(-1)
        sim = edge_dot(u, src, dst)
        if not self.training:
            return src, dst, sim.clamp(min=0), u.new_zeros(())
        ps, pd = graph.edge_index
        prior = graph.edge_weight / graph.edge_weight.max().clamp(min=1e-12) if len(ps) else graph.edge_weight
        neg_src = torch.randint(n, (max(len(ps), n),), device=u.device)
        neg_dst = torch.randint(n, (max(len(ps), n),), device=u.device)
        distinct = neg_src != neg_dst
        neg = edge_dot(u, neg_src[distinct], neg_dst[distinct])
        pos_term = (edge_dot(u, ps, pd) - prior).pow(2).mean() if len(ps) else u.new_zeros(())
        graph_loss = pos_term + neg.pow(2).mean()
        return src, dst, sim.clamp(min=0), graph_loss


class StateDropout(nn.Module):
    """Dropout of the condition states ``[N, S, hidden]``: ``nn.Dropout``'s (a mask per node, injection
    set and channel), or with ``shared`` one mask per node and channel for every injection set of the
    forward pass, so that the sets of one step (a double, its singles, the control) differ by their
    perturbations only, and the mask is ``S`` times smaller to draw."""

    def __init__(self, p: float, *, shared: bool = False) -> None:
        super().__init__()
        self.p, self.shared = p, shared

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.shared:
            return nn.functional.dropout(x, self.p, True)
        mask = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * mask.div_(1 - self.p)


class RelationAttentionLayer(nn.Module):
    """One round of message passing with attention and message weights per relation."""

    def __init__(self, hidden: int, *, relations: int, node_types: int, attention_hidden: int, dropout: float,
                 shared_dropout: bool = False) -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(hidden)
        self.att_src = nn.Parameter(torch.randn(relations, hidden, attention_hidden) * scale)
        self.att_dst = nn.Parameter(torch.randn(relations, hidden, attention_hidden) * scale)
        self.att_vec = nn.Parameter(torch.randn(relations, attention_hidden) / math.sqrt(attention_hidden))
        self.message = nn.Parameter(torch.randn(relations, hidden, hidden) * scale)
        self.root = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(node_types)])
        self.norm = nn.LayerNorm(hidden)
        self.dropout = StateDropout(dropout, shared=shared_dropout)

    def attention(self, h0: Tensor, structure: Structure) -> Tensor:
        """Attention of every edge, normalised over each target's incoming edges, ``[E]``."""
        ps = torch.einsum("nh,rha->rna", h0, self.att_src)
        pd = torch.einsum("nh,rha->rna", h0, self.att_dst)
        rel, src, dst = structure.relation, structure.src, structure.dst
        hidden = nn.functional.leaky_relu(ps[rel, src] + pd[rel, dst], 0.2)
        score = (hidden * self.att_vec[rel]).sum(-1) + torch.log(structure.weight.clamp(min=1e-8))
        return segment_softmax(score, dst, num_nodes=h0.shape[0])

    def forward(self, h: Tensor, node_type: Tensor, structure: Structure, alpha: Tensor) -> Tensor:
        """New condition states ``[N, S, hidden]`` from ``h`` (same shape).

        Messages: one CSR product for all relations (:class:`Aggregation`: a block per relation
        with a row for each node of its target type, so each block is a contiguous
        ``[N_t * S, hidden]`` matrix), then, per target type, its root weight and its relations'
        message weights as matrix products on its nodes (grouped by type once per graph) and
        blocks, summed: no layout copy of the states and no product on rows that get no message.
        """
        n, s, hid = h.shape
        r = self.message.shape[0]
        plan = structure.plan
        if plan is None:
            plan = aggregation_plan(structure.src, structure.dst, structure.relation, n, r, node_type, len(self.root))
        types = len(self.root)
        flat = aggregate(alpha, h.reshape(n, s * hid), plan).view(-1, hid)
        blocks = flat.split([size * s for size in plan.block_sizes])  # block r: [N_(r % T) * S, hidden]
        grouped = h if types == 1 else h.index_select(0, plan.type_order)
        parts = grouped.reshape(-1, hid).split([count * s for count in plan.type_counts])
        out = []
        for t, (root, part) in enumerate(zip(self.root, parts)):
            message = blocks[t] @ self.message[t]
            for rel in range(t + types, r, types):  # the relations into type t: source type * T + t
                message = torch.addmm(message, blocks[rel], self.message[rel])
            out.append(root(part) + message)  # root, then messages: the sums of the dense form, in its order
        update = nn.functional.gelu(torch.cat(out) if types > 1 else out[0]).view(n, s, hid)
        if types > 1:
            update = update.index_select(0, plan.type_inverse)
        if not self.dropout.shared and update.stride() != h.stride():  # the mask is drawn in memory order: keep the layout
            update = torch.empty_like(h).copy_(update)
        return self.norm(h + self.dropout(update))


class GRAPE(nn.Module):
    """The full model; see the module docstring."""

    def __init__(
        self,
        *,
        num_nodes: int,
        modality_dims: dict[str, int],
        context_dim: int,
        node_types: tuple[str, ...],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.node_types = tuple(node_types)
        h = config.hidden
        n_rel = len(node_types) ** 2
        self.encoders = nn.ModuleDict({m: ModalityEncoder(modality_dims[m], h, config.dropout) for m in config.modalities})
        self.fusion = nn.Linear(h, h)
        self.fusion_query = nn.Parameter(torch.randn(h) / math.sqrt(h))
        self.type_embedding = nn.Embedding(len(node_types), h)
        self.context = nn.Linear(context_dim, h)
        self.structure_learner = (
            StructureLearner(h, layers=config.gsl_layers, heads=config.gsl_heads, k=config.gsl_k,
                             chunk_size=config.gsl_chunk_size, refresh=config.gsl_refresh)
            if config.gsl else None
        )
        self.layers = nn.ModuleList([
            RelationAttentionLayer(h, relations=n_rel, node_types=len(node_types),
                                   attention_hidden=config.attention_hidden, dropout=config.dropout,
                                   shared_dropout=config.dropout_shared)
            for _ in range(config.layers)
        ])
        self.perturbation = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))
        if config.global_context:
            self.global_gate = nn.Linear(h, h)
            self.global_proj = nn.Linear(h, h, bias=False)
        self.dropout = StateDropout(config.dropout, shared=config.dropout_shared)
        self.gene_weight = nn.Parameter(torch.zeros(num_nodes, h))
        self.gene_bias = nn.Parameter(torch.zeros(num_nodes))
        self.head = nn.Linear(h, 1)
        if config.singles == "kernel":
            # the network is a correction to the kernel's mean: it starts at zero (gene_weight and
            # gene_bias are zero already), and the kernel's weights start uniform
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.kernel_similarity = nn.Parameter(torch.zeros(len(config.modalities)))
            self.kernel_prior = nn.Parameter(torch.zeros(()))
            self.kernel_self = nn.Parameter(torch.zeros(()))
        if config.doubles == "additive":
            self.interaction = nn.Sequential(nn.Linear(h + 2, h), nn.GELU(), nn.Linear(h, 1))
            nn.init.zeros_(self.interaction[-1].weight)
            nn.init.zeros_(self.interaction[-1].bias)
        self._topology: dict = {}  # structure key -> union of prior and learned edges (see structure)
        self.set_observed_singles(torch.empty(0, dtype=torch.long), torch.zeros(0, num_nodes),
                                  torch.zeros(num_nodes, dtype=torch.bool))

    def set_observed_singles(self, nodes: Tensor, delta: Tensor, measured: Tensor, *,
                             contexts: Tensor | None = None, num_contexts: int | None = None) -> None:
        """Observed changes of fitting singles, used inside doubles (``observed_singles``).

        ``nodes [K]`` are the perturbed genes of training (and validation) singles,
        ``delta [K, N]`` their observed change from control at every node, valid where
        ``measured [N]``; ``contexts [K]`` the cell state of each (default 0) among
        ``num_contexts`` states (default: the largest index + 1). They are buffers (saved
        with the ``state_dict``; ``observed_row`` is ``[states, N]``). Never pass test
        conditions.
        """
        n = measured.shape[0]
        device = measured.device
        contexts = (torch.zeros(len(nodes), dtype=torch.long) if contexts is None else contexts).to(device)
        if num_contexts is None:
            num_contexts = int(contexts.max()) + 1 if len(contexts) else 1
        row = torch.full((num_contexts, n), -1, dtype=torch.long, device=device)
        row[contexts, nodes.to(device)] = torch.arange(len(nodes), device=device)
        self.register_buffer("observed_row", row)
        self.register_buffer("observed_delta", delta.to(measured.device, torch.float32))
        self.register_buffer("observed_measured", measured.bool())

    # ------------------------------------------------------------------ encoder

    def encode_modalities(self, graph: GraphTensors, index: Tensor | None = None) -> dict[str, Tensor]:
        """Each modality's encoded features (of the genes ``index``, default all)."""
        return {m: enc(graph.modalities[m] if index is None else graph.modalities[m][index])
                for m, enc in self.encoders.items()}

    def encode(self, graph: GraphTensors, context: int = 0) -> Tensor:
        """Condition-independent gene states ``[N, hidden]`` in cell state ``context``."""
        z = torch.stack(list(self.encode_modalities(graph).values()), dim=1)  # [N, M, h]
        if z.shape[1] > 1:
            beta = torch.softmax(torch.tanh(self.fusion(z)) @ self.fusion_query, dim=1)  # [N, M]
            fused = (beta.unsqueeze(-1) * z).sum(1)
        else:
            fused = z[:, 0]
        return fused + self.type_embedding(graph.node_type) + self.context(graph.context_of(context))

    def alignment_loss(self, graph: GraphTensors, index: Tensor) -> Tensor:
        """Symmetric InfoNCE between the text and DNA encodings of the genes ``index``."""
        z = self.encode_modalities(graph, index)
        text = nn.functional.normalize(z["text"], dim=-1)
        dna = nn.functional.normalize(z["dna"], dim=-1)
        logits = text @ dna.T / self.config.temperature
        labels = torch.arange(len(index), device=logits.device)
        return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))

    # ------------------------------------------------------------------ graph

    @contextlib.contextmanager
    def training_graph(self) -> Iterator[None]:
        """Evaluation passes inside take the learned graph of training: the edges of the last search of
        the training steps (their weights from the current parameters), not a search of their own.

        This is the graph the next training step would use when ``gsl_refresh`` is above 1 (the
        validation of :func:`grape.model.train.fit`); with ``gsl_refresh`` 1 training searches on
        every step, so evaluation searches too and nothing changes. Outside, evaluation (predictions,
        a loaded model) searches for the current parameters.
        """
        learner = self.structure_learner
        if learner is None:
            yield
            return
        previous, learner.reuse_training_search = learner.reuse_training_search, True
        try:
            yield
        finally:
            learner.reuse_training_search = previous

    def _version(self) -> tuple:
        """In-place versions of every parameter: changes with each optimiser step and state-dict load."""
        return tuple(p._version for p in self.parameters())

    def structure(self, graph: GraphTensors, h0: Tensor, context: int = 0) -> Structure:
        """The prior graph, mixed with the learned one when GSL is on.

        The union of prior and learned edges (its coalescing and CSR plan) is built when the
        learned edges change, i.e. at each search (:meth:`StructureLearner.select`); the
        weights are recomputed every pass.
        """
        n = graph.num_nodes
        ps, pd = graph.edge_index
        prior = row_normalized(ps, pd, graph.edge_weight.clamp(min=0), n)
        n_rel, n_types = len(graph.node_types) ** 2, len(graph.node_types)
        if self.structure_learner is None:
            src, dst, weight = ps, pd, prior
            learned = torch.zeros_like(ps, dtype=torch.bool)
            plan = aggregation_plan(src, dst, graph.relation_of(src, dst), n, n_rel, graph.node_type, n_types)
            return Structure(src, dst, weight, graph.relation_of(src, dst), h0.new_zeros(()), learned, plan)
        key = (id(graph), n, graph.edge_index.data_ptr(), context)
        ls, ld, sim, graph_loss = self.structure_learner(h0, graph, key=key,
                                                         version=None if self.training else self._version())
        lam = self.config.gsl_prior_weight
        values = torch.cat([lam * prior, (1 - lam) * row_normalized(ls, ld, sim, n)])
        cache_key = (*key, self.training)
        # the cached topology holds the old learned edges, so a new search never reuses their address;
        # evaluation on the training's edges (training_graph) finds the training's topology
        topology = next((t for t in (self._topology.get(cache_key), self._topology.get((*key, not self.training)))
                         if t is not None and t[0].data_ptr() == ls.data_ptr() and t[0].shape == ls.shape), None)
        if topology is None:
            src, dst = torch.cat([ps, ls]), torch.cat([pd, ld])
            unique, inverse = torch.unique(dst * n + src, return_inverse=True)
            src, dst = unique % n, unique // n
            learned = torch.zeros(len(unique), dtype=torch.bool, device=src.device)
            learned[inverse[len(ps):]] = True
            relation = graph.relation_of(src, dst)
            plan = aggregation_plan(src, dst, relation, n, n_rel, graph.node_type, n_types)
            topology = (ls, src, dst, inverse, learned, relation, plan)
            self._topology = {**{k: v for k, v in self._topology.items() if k[0] == key[0]}, cache_key: topology}
        _, src, dst, inverse, learned, relation, plan = topology
        weight = values.new_zeros(len(src)).index_add(0, inverse, values)
        return Structure(src, dst, weight, relation, graph_loss, learned, plan)

    # ------------------------------------------------------------------ forward

    def _propagate(self, graph: GraphTensors, h0: Tensor, structure: Structure, sets: Tensor,
                   context: int = 0) -> tuple[Tensor, Tensor]:
        """Change from control ``[S, N]`` and final states ``[N, S, h]`` of injection sets ``[S, 2]``
        (with ``singles="kernel"`` the sum of the set's genes' kernel means plus the network's output)."""
        n, s = graph.num_nodes, sets.shape[0]
        indicator = torch.zeros(s, n, device=h0.device, dtype=h0.dtype)
        indicator.scatter_add_(1, sets.clamp(min=0), (sets >= 0).to(h0.dtype))
        pert = self.perturbation(h0)  # [N, h]
        h = h0.unsqueeze(1) + indicator.T.unsqueeze(-1) * pert.unsqueeze(1)  # [N, S, h]
        if self.config.global_context:
            condition = indicator @ pert  # [S, h]
            h = h + torch.sigmoid(self.global_gate(h0)).unsqueeze(1) * self.global_proj(condition).unsqueeze(0)
        h = self.dropout(h)
        for layer in self.layers:
            h = layer(h, graph.node_type, structure, layer.attention(h0, structure))
        delta = (h * self.gene_weight.unsqueeze(1)).sum(-1) + self.head(h).squeeze(-1) + self.gene_bias.unsqueeze(1)
        if self.config.singles == "kernel":
            return self.kernel(graph, h0, sets, context) + delta.T, h
        return delta.T, h

    def kernel(self, graph: GraphTensors, h0: Tensor, sets: Tensor, context: int = 0) -> Tensor:
        """Each set's sum over its genes of the kernel mean ``[S, N]``: for gene ``g``, the mean of the
        observed changes of the fitting singles of cell state ``context`` other than ``g`` itself,
        weighted by ``softmax_j(sum_m a_m cos(x_m[g], x_m[j]) + c A[g, j])``
        (``x_m`` the raw features of modality ``m``, ``A`` the prior graph's weight between the two genes,
        either direction). At the perturbed gene itself the mean moves by a learned gate ``s`` toward
        the same weighted mean of the fitting singles' changes of their own perturbed gene (a
        knockdown lowers its target, an activation raises it, a knockout may leave its mRNA as it
        is; the others' changes of ``g`` say little about it). At initialisation ``a``, ``c`` and ``s``
        are zero: uniform weights, the mean of the other fitting singles (for a gene that is no fitting
        single, the mean baseline of singles). Zero where nothing was observed (unmeasured genes, no
        fitting single). Three kinds of coefficient only: a learned attention between the genes'
        encoded states (``q(h0_g) . k(h0_j)``, a matrix) overfitted the leave-one-out fit on real
        screens (BENCHMARKS.md).
        """
        n = graph.num_nodes
        if not len(self.observed_delta) or context >= self.observed_row.shape[0]:
            return h0.new_zeros(len(sets), n)
        row = self.observed_row[context]
        nodes = (row >= 0).nonzero().squeeze(1)
        if len(nodes) == 0:
            return h0.new_zeros(len(sets), n)
        observed = self.observed_delta[row[nodes]] * self.observed_measured.to(h0.dtype)  # [K, N]
        genes = sets.reshape(-1)
        present = (genes >= 0).nonzero().squeeze(1)
        g = genes[present]
        logits = h0.new_zeros(len(g), len(nodes))  # [G, K]
        for coeff, m in zip(self.kernel_similarity, self.config.modalities):
            x = nn.functional.normalize(graph.modalities[m], dim=-1)
            logits = logits + KERNEL_SCALE * coeff * (x[g] @ x[nodes].T)
        position = torch.full((n,), -1, dtype=torch.long, device=h0.device)
        position[nodes] = torch.arange(len(nodes), device=h0.device)
        ps, pd = graph.edge_index
        weight = graph.edge_weight.clamp(min=0).to(h0.dtype)
        prior = h0.new_zeros(n, len(nodes))
        for a, b in ((ps, pd), (pd, ps)):  # either direction
            keep = position[a] >= 0
            prior.index_put_((b[keep], position[a][keep]), weight[keep], accumulate=True)
        logits = logits + KERNEL_SCALE * self.kernel_prior * prior[g]
        logits = logits.masked_fill(g.unsqueeze(1) == nodes.unsqueeze(0), float("-inf"))  # never itself
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a gene whose only candidate is itself: 0
        means = weights @ observed  # [G, N]
        # the perturbed gene itself: the weighted mean of the fitting singles' changes of their own gene
        own_measured = self.observed_measured[nodes].to(h0.dtype)  # [K]
        own = observed[torch.arange(len(nodes), device=h0.device), nodes] * own_measured
        w_own = weights * own_measured
        total = w_own.sum(1)
        own_mean = (w_own @ own) / total.clamp(min=1e-12)
        at_g = means[torch.arange(len(g), device=h0.device), g]
        step = KERNEL_SCALE * self.kernel_self * (own_mean - at_g) * (total > 0) * self.observed_measured[g]
        means = means.index_put((torch.arange(len(g), device=h0.device), g), step, accumulate=True)
        return h0.new_zeros(len(genes), n).index_copy(0, present, means).view(len(sets), -1, n).sum(1)

    def forward(self, graph: GraphTensors, perturbed: Tensor, *, context: int = 0, with_graph_loss: bool = False,
                with_auxiliary: bool = False):
        """Predicted change from control ``[B, N]`` (and the graph regulariser if asked).

        ``perturbed`` is ``[B, 2]`` global node ids of each condition's perturbed genes,
        padded with -1; rows may list their genes in any order. Every row is in cell state
        ``context`` (its expression context and its observed singles). ``with_auxiliary`` also
        returns, for training, the doubles predicted from the network's own singles
        (``(row index [D], prediction [D, N])``; empty unless observed singles replaced some):
        the path that doubles of unobserved singles take, so it is trained as well.
        """
        rows = canonical_sets(perturbed)
        h0 = self.encode(graph, context)
        structure = self.structure(graph, h0, context)
        auxiliary = (rows.new_zeros(0), h0.new_zeros(0, graph.num_nodes))
        if self.config.doubles == "joint":
            sets, inverse = torch.unique(rows, dim=0, return_inverse=True)
            delta = self._propagate(graph, h0, structure, sets, context)[0][inverse]
        else:
            delta, auxiliary = self._additive(graph, h0, structure, rows, context=context,
                                              with_auxiliary=with_auxiliary)
        out = (delta,)
        if with_graph_loss:
            out += (structure.graph_loss,)
        if with_auxiliary:
            out += (auxiliary,)
        return out if len(out) > 1 else delta

    def _additive(self, graph: GraphTensors, h0: Tensor, structure: Structure, rows: Tensor, *, context: int = 0,
                  with_auxiliary: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b = rows.shape[0]
        pad = torch.full_like(rows[:, :1], -1)
        first = torch.cat([rows[:, :1], pad], 1)  # gene A alone (or nothing for the control)
        double = rows[:, 1] >= 0
        d = rows[double]
        parts = [first]
        if len(d):
            parts += [torch.cat([d[:, 1:], pad[double]], 1), d, torch.full_like(d[:1], -1)]
        sets, inverse = torch.unique(torch.cat(parts), dim=0, return_inverse=True)
        delta_sets, states = self._propagate(graph, h0, structure, sets, context)
        delta = delta_sets[inverse[:b]]
        auxiliary = (rows.new_zeros(0), delta.new_zeros(0, delta.shape[1]))
        if not len(d):
            return delta, auxiliary
        n_d = len(d)
        i_a, i_b = inverse[:b][double], inverse[b : b + n_d]
        i_ab, i_0 = inverse[b + n_d : b + 2 * n_d], inverse[b + 2 * n_d]
        d_a, d_b = delta_sets[i_a], delta_sets[i_b]  # [D, N]
        nonadditive = states[:, i_ab] - states[:, i_a] - states[:, i_b] + states[:, i_0].unsqueeze(1)  # [N, D, h]
        index = double.nonzero().squeeze(1)
        if self.config.observed_singles and len(self.observed_delta):
            observed_row = self.observed_row[context]
            o_a, o_b = self._observed(observed_row, d[:, 0], d_a), self._observed(observed_row, d[:, 1], d_b)
            replaced = (observed_row[d[:, 0]] >= 0) | (observed_row[d[:, 1]] >= 0)
            if with_auxiliary and bool(replaced.any()):
                pick = replaced.nonzero().squeeze(1)
                auxiliary = (index[pick], self._combine(d_a[pick], d_b[pick], nonadditive[:, pick]))
            d_a, d_b = o_a, o_b
        return delta.index_put((index,), self._combine(d_a, d_b, nonadditive)), auxiliary

    def _combine(self, d_a: Tensor, d_b: Tensor, nonadditive: Tensor) -> Tensor:
        """Sum of two single effects ``[D, N]`` plus the interaction correction."""
        features = torch.cat([(d_a * d_b).T.unsqueeze(-1), (d_a + d_b).T.unsqueeze(-1), nonadditive], dim=-1)
        return d_a + d_b + self.interaction(features).squeeze(-1).T

    def _observed(self, observed_row: Tensor, genes: Tensor, predicted: Tensor) -> Tensor:
        """The observed single effect of each gene where it was a fitting single (measured genes)."""
        row = observed_row[genes]
        known = (row >= 0).unsqueeze(1) & self.observed_measured.unsqueeze(0)
        return torch.where(known, self.observed_delta[row.clamp(min=0)], predicted)

    # ------------------------------------------------------------------ network

    @torch.no_grad()
    def network(self, graph: GraphTensors, context: int = 0) -> dict[str, Tensor]:
        """The learned message-passing graph of cell state ``context``: edges, graph weight,
        attention of each layer (``layer_attention [L, E]``) and their mean (``attention``)."""
        h0 = self.encode(graph, context)
        structure = self.structure(graph, h0, context)
        alphas = [layer.attention(h0, structure) for layer in self.layers]
        layer_attention = torch.stack(alphas) if alphas else structure.weight.unsqueeze(0)
        return {"src": structure.src, "dst": structure.dst, "weight": structure.weight,
                "attention": layer_attention.mean(0), "layer_attention": layer_attention,
                "learned": structure.learned, "relation": structure.relation}
