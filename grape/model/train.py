"""Train GRAPE on pseudobulk changes from control of the training conditions.

The model learns each condition's mean expression change from the control mean (over
all measured genes) from training conditions only; validation conditions choose the
epoch (early stopping and model selection on ``select_metric``); test conditions are
only predicted. The split comes from ``grape split``.

Steps: (1) optional contrastive alignment pretraining of the text and DNA encoders
(``pretrain_epochs``); (2) training with the loss ``loss_mse * MSE + loss_huber *
Huber(huber_delta) + loss_direction * direction + loss_pearson * (1 - per-condition Pearson of the
changes) + loss_graph * graph regulariser``;
the MSE on expression equals the MSE on the change (the control mean is fixed); the
direction term is a differentiable form of GEARS' (``(sign(y) - tanh(pred / 0.1))^2``).
Optional co-expression edges (``coexpression_k``) come from the training conditions'
changes only, computed here after the split, and join the prior graph.

Gene identity: with ``--mapping`` (``annotate/mapping.tsv``, :class:`grape.annotation.identity.GeneIdentity`)
measured genes and the genes of each condition reach their graph nodes through the
mapping (a perturbed alias such as ``C19orf26`` reaches the node of the measured
``CBARP``), and measured features with status ``excluded`` (guides, guide pairs, Cas
proteins) are no training targets and are left out of ``predictions.h5ad``. Outputs keep
the dataset's own labels. Without a mapping every label is its own node key.

Cell states (contexts): the obs column ``dataset.context_key`` (default
``dataset.cell_type_key``; absent: one context). Every (context, condition) is a row of
its own: its pseudobulk minus the control of the same context. The split is per
condition label, so a held-out perturbation is held out in every context. A row is
predicted in its own context: the node context features are that context's control
levels (z-scored over all contexts together) and the measured flag, and the observed
singles inside its doubles are those of the same context (:class:`grape.model.gnn.GRAPE`,
``context=k``). A batch with rows of several contexts runs one forward pass per context.
With one context everything is exactly the one-context model.

Ablations (``--ablation``, or the workflow's model variants from ``train.ablations``)
are named sets of option overrides, :data:`grape.variants.ABLATIONS`. A model variant
trains on the graph variant its resolved ``modalities`` and ``biotype`` need
(:func:`grape.variants.model_graph_variant`: the text-only model on the graph whose
prior comes from text alone, the no-biotype model on the graph of one node type);
:func:`check_graph` refuses another graph.

Outputs of the train stage (:mod:`grape.stages.train`): ``model.safetensors``
(``state_dict``), ``model.yaml`` (resolved options and shapes, enough for
:func:`load_model`), ``history.tsv`` (per epoch), ``predictions.h5ad`` (every (context,
condition) row: obs ``condition``, ``context``, ``split``, ``subgroup``; the obs name is
the condition with one context, ``condition | context`` with several; var: the kept
measured features) and ``network.tsv`` (the learned network of the first context,
:mod:`grape.graph.network`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from grape import __version__
from grape.data.dataset import (
    DatasetError,
    DatasetOptions,
    condition_genes,
    gene_symbols,
    pseudobulk_by_context,
    row_names,
)
from grape.graph.build import Graph, coexpression_edges, merge_edges, zscore_columns
from grape.annotation.identity import GeneIdentity
from grape.model.calibrate import calibrate
from grape.model.gnn import GRAPE, MODALITIES, GraphTensors, ModelConfig
from grape.variants import ABLATIONS, NAMED_GRAPHS, graph_variant_for
from grape.options import options_class

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("none", "cosine", "plateau")
SELECT_METRICS = ("val_mse", "val_pearson_delta")


# Bases listed last section first: a dataclass's fields follow the reversed MRO (dataset, then train).
@dataclass(frozen=True)
class Options(options_class("train"), DatasetOptions):
    """Options of the train stage (config sections ``dataset`` and ``train``; ``train.ablations`` is the
    workflow's, which trains each listed variant as its own job with ``ablation`` set)."""

    # Not a config key: the workflow sets it per job from the {variant} wildcard (train.ablations).
    ablation: str = field(default="", metadata={"help": f"model variant: '' (full) or one of {', '.join(ABLATIONS)}"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("select_metric", self.select_metric, SELECT_METRICS)):
            if value not in allowed:
                raise ValueError(f"train.{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.ablation and self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r} (known: {', '.join(ABLATIONS)})")
        self.model_config()  # checks the model's options (doubles, modalities)

    def resolved(self) -> Options:
        """The options with the ablation's overrides applied."""
        if not self.ablation:
            return self
        return dataclasses.replace(self, **ABLATIONS[self.ablation])

    def model_config(self) -> ModelConfig:
        """The model's architecture: every :class:`ModelConfig` field these options have (its internal
        constants keep their defaults)."""
        mine = {f.name for f in dataclasses.fields(self)}
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig) if f.name in mine})


# --------------------------------------------------------------------------- inputs


def check_graph(graph: Graph, options: Options, *, source: str = "the graph") -> None:
    """Refuse a graph variant other than the one the (resolved) options need.

    A model that reads a subset of the modalities trains on the graph whose prior comes
    from that subset; ``biotype`` false needs the graph of one node type
    (:func:`grape.variants.model_graph_variant`).
    """
    needed = NAMED_GRAPHS.get(options.ablation) or graph_variant_for(modalities=options.modalities,
                                                                      biotype=options.biotype)
    if graph.variant != needed:
        raise ValueError(f"{source} is graph variant {graph.variant!r}, but model variant "
                         f"{options.ablation or 'full'} (modalities {'+'.join(options.modalities)}, biotype "
                         f"{str(options.biotype).lower()}) trains on graph variant {needed!r}: "
                         f"build it with `grape graph --variant {needed}`")


def graph_tensors(graph: Graph, control: np.ndarray, measured: np.ndarray) -> GraphTensors:
    """The model's input: the graph's features z-scored per column, its node types and prior edges, and
    the expression context of every gene.

    The context is the z-scored control level and the measured flag. ``control`` is ``[N]``
    (one context: context ``[N, 2]``) or ``[K, N]`` for K cell states (context ``[K, N, 2]``;
    the level z-scored over all states together, so the states' differences stay visible).
    """
    n = graph.num_nodes
    level = torch.as_tensor(control, dtype=torch.float32)
    flag = torch.as_tensor(measured, dtype=torch.float32)
    if level.dim() == 1:
        context = torch.cat([zscore_columns(level.unsqueeze(1)), flag.unsqueeze(1)], dim=1)
    else:
        k = level.shape[0]
        context = torch.cat([zscore_columns(level.reshape(-1, 1)).reshape(k, n, 1),
                             flag.expand(k, n).unsqueeze(-1)], dim=-1)
    features = {m: zscore_columns(x.float()) for m, x in graph.modalities.items()}
    return GraphTensors(features, context, graph.node_type, tuple(graph.node_types), graph.edge_index,
                        graph.edge_weight.float())


@dataclass(frozen=True)
class Problem:
    """Pseudobulk targets aligned with the graph's nodes: one row per (context, condition)."""

    conditions: list[str]  # [R] condition label of each row
    perturbed: torch.Tensor  # [R, 2] node ids, -1 padded
    delta: torch.Tensor  # [R, G] mean change from the row's context's control, kept measured genes
    controls: np.ndarray  # [K, G] control mean of each context
    measured_nodes: torch.Tensor  # [G] node id of each kept measured gene
    var_names: list[str]  # [G] kept measured features (var_names)
    contexts: list[str] = field(default_factory=lambda: ["cell"])  # [K] context names, sorted
    row_context: torch.Tensor | None = None  # [R] context index of each row (None: all 0)

    @property
    def control(self) -> np.ndarray:
        """The control mean ``[G]`` of a one-context problem."""
        if len(self.controls) != 1:
            raise ValueError(f"{len(self.controls)} contexts ({', '.join(self.contexts)}): use Problem.controls")
        return self.controls[0]

    @property
    def context_index(self) -> torch.Tensor:
        """``[R]`` context index of each row."""
        if self.row_context is None:
            return torch.zeros(len(self.conditions), dtype=torch.long)
        return self.row_context

    @property
    def row_contexts(self) -> list[str]:
        """``[R]`` context name of each row."""
        return [self.contexts[k] for k in self.context_index.tolist()]

    def rows_of(self, conditions: list[str]) -> torch.Tensor:
        """Rows of ``conditions`` (every context of each, in that order)."""
        rows: dict[str, list[int]] = {}
        for i, cond in enumerate(self.conditions):
            rows.setdefault(cond, []).append(i)
        return torch.tensor([i for c in conditions for i in rows.get(c, [])], dtype=torch.long)


def node_keys(identity: GeneIdentity | None) -> dict[str, str]:
    """Dataset label -> node key (the mapping's ``node``; without a mapping, none: a label is its own key)."""
    return identity.nodes() if identity is not None else {}


def build_problem(adata: ad.AnnData, graph: Graph, *, options: DatasetOptions,
                  identity: GeneIdentity | None = None) -> Problem:
    """Pseudobulk the dataset per context and map genes and perturbations onto graph nodes.

    With ``identity`` (``mapping.tsv``) labels reach their node through the mapping and
    excluded features are left out. Raises :class:`DatasetError` naming the gene when a
    measured or perturbed gene has no node.
    """
    node = {g: i for i, g in enumerate(graph.genes)}
    keys = node_keys(identity)
    symbols = gene_symbols(adata, options=options)
    var_names = adata.var_names.astype(str).to_numpy()
    excluded = set(identity.excluded) if identity is not None else set()
    keep = np.array([v not in excluded for v in var_names], dtype=bool)
    if not keep.any():
        raise DatasetError("every measured feature is excluded as a non-gene in the mapping; "
                           "check dataset.non_gene_pattern and dataset.non_gene_features")
    if excluded:
        log.info("%d measured features excluded as non-genes (no training targets): %s%s", int((~keep).sum()),
                 ", ".join(var_names[~keep][:5]), " ..." if (~keep).sum() > 5 else "")
    measured = [keys.get(g, g) for g in symbols[keep]]
    absent = [g for g, key in zip(symbols[keep], measured) if key not in node]
    if absent:
        raise DatasetError(f"measured genes without a graph node: {', '.join(absent[:10])}"
                           + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
                           + ("" if identity is None else " (rerun annotate and graph with this dataset)"))
    by_context = pseudobulk_by_context(adata, options=options)
    contexts = list(by_context)
    rows_cond: list[str] = []
    rows_ctx: list[int] = []
    deltas, controls = [], []
    for k, means in by_context.items():
        control = means.loc[options.control].to_numpy(dtype=np.float32)
        conds = [c for c in means.index if c != options.control]
        deltas.append((means.loc[conds].to_numpy(dtype=np.float32) - control)[:, keep])
        controls.append(control[keep])
        rows_cond += conds
        rows_ctx += [contexts.index(k)] * len(conds)
    perturbed = torch.full((len(rows_cond), 2), -1, dtype=torch.long)
    genes_of: dict[str, list[int]] = {}
    for cond in dict.fromkeys(rows_cond):
        genes = condition_genes(cond, options=options)
        missing = [g for g in genes if keys.get(g, g) not in node]
        if missing:
            raise DatasetError(f"condition {cond!r} names genes absent from the annotation/graph: {', '.join(missing)}")
        if len(genes) > 2:
            raise DatasetError(f"condition {cond!r} perturbs more than two genes")
        genes_of[cond] = [node[keys.get(g, g)] for g in genes]
    for row, cond in enumerate(rows_cond):
        perturbed[row, : len(genes_of[cond])] = torch.tensor(genes_of[cond], dtype=torch.long)
    delta = torch.as_tensor(np.concatenate(deltas) if len(deltas) > 1 else deltas[0])
    if len(contexts) > 1:
        log.info("%d contexts (%s): %d (context, condition) rows", len(contexts), ", ".join(contexts), len(rows_cond))
    return Problem(rows_cond, perturbed, delta, np.stack(controls),
                   torch.tensor([node[g] for g in measured]), var_names[keep].tolist(),
                   contexts=contexts, row_context=torch.tensor(rows_ctx, dtype=torch.long))


def control_by_node(problem: Problem, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Control level of every node (``[N]`` with one context, ``[K, N]`` with several) and the measured flag."""
    control = np.zeros((len(problem.contexts), num_nodes), dtype=np.float32)
    measured_flag = np.zeros(num_nodes, dtype=np.float32)
    control[:, problem.measured_nodes.numpy()] = problem.controls
    measured_flag[problem.measured_nodes.numpy()] = 1.0
    return (control[0] if len(problem.contexts) == 1 else control), measured_flag


def context_groups(rows: torch.Tensor, row_context: torch.Tensor | None) -> list[tuple[int, torch.Tensor]]:
    """``rows`` split by context, ``[(context, rows of it)]`` in context order; one context: ``rows`` itself."""
    if row_context is None or len(rows) == 0:
        return [(0, rows)]
    ctx = row_context[rows.cpu()]
    present = ctx.unique().tolist()
    if len(present) == 1:
        return [(int(present[0]), rows)]
    return [(int(k), rows[(ctx == k).to(rows.device)]) for k in present]


# --------------------------------------------------------------------------- training


def build_model(graph: GraphTensors, options: Options) -> GRAPE:
    return GRAPE(num_nodes=graph.num_nodes, modality_dims={k: v.shape[1] for k, v in graph.modalities.items()},
                 context_dim=graph.context_dim, node_types=graph.node_types, config=options.model_config())


def _optimizer(params, options: Options) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=0.9, weight_decay=options.weight_decay)
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, options: Options):
    if options.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    if options.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                          patience=max(1, options.patience // 4))
    return None


def pearson_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair (NaN where a row is constant)."""
    p = pred - pred.mean(1, keepdim=True)
    t = target - target.mean(1, keepdim=True)
    denom = (p.pow(2).sum(1) * t.pow(2).sum(1)).sqrt()
    return torch.where(denom > 0, (p * t).sum(1) / denom.clamp(min=1e-30), torch.full_like(denom, float("nan")))


def loss_terms(pred: torch.Tensor, target: torch.Tensor, *, options: Options) -> dict[str, torch.Tensor]:
    """The prediction loss terms on changes from control."""
    terms = {"mse": torch.nn.functional.mse_loss(pred, target)}
    if options.loss_huber:
        terms["huber"] = torch.nn.functional.huber_loss(pred, target, delta=options.huber_delta)
    if options.loss_pearson:
        r = pearson_rows(pred, target)
        terms["pearson"] = (1 - r.nan_to_num(0.0)).mean()
    if options.loss_direction:
        terms["direction"] = (torch.sign(target) - torch.tanh(pred / 0.1)).pow(2).mean()
    return terms


def set_observed_singles(model: GRAPE, problem: Problem, fit_rows: torch.Tensor, num_nodes: int) -> None:
    """Give the model the observed changes of the singles among ``fit_rows`` (never test conditions).

    The training and validation singles: the model fits on the former and picks its epoch
    on the latter, and the baselines of ``grape evaluate`` fit on both as well. Each is
    the observed single of its own context.
    """
    pert = problem.perturbed[fit_rows]
    single = (pert[:, 0] >= 0) & (pert[:, 1] < 0)
    nodes = pert[single, 0]
    delta = torch.zeros(len(nodes), num_nodes)
    delta[:, problem.measured_nodes] = problem.delta[fit_rows[single]]
    measured = torch.zeros(num_nodes, dtype=torch.bool)
    measured[problem.measured_nodes] = True
    device = next(model.parameters()).device
    contexts = problem.context_index[fit_rows[single]]
    model.set_observed_singles(nodes.to(device), delta.to(device), measured.to(device), contexts=contexts.to(device),
                               num_contexts=len(problem.contexts))


def pretrain(model: GRAPE, graph: GraphTensors, *, options: Options, generator: torch.Generator) -> float | None:
    """Contrastive alignment of the text and DNA encoders; returns the last epoch's loss."""
    if options.pretrain_epochs <= 0 or set(model.config.modalities) != set(MODALITIES):
        return None
    params = [p for m in model.encoders.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    model.train()
    loss_value = None
    device = graph.node_type.device
    for _ in range(options.pretrain_epochs):
        order = torch.randperm(graph.num_nodes, generator=generator).to(device)
        total, count = 0.0, 0
        for chunk in order.split(options.pretrain_batch_size):
            if len(chunk) < 2:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = model.alignment_loss(graph, chunk)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(chunk), count + len(chunk)
        loss_value = total / max(count, 1)
    log.info("alignment pretraining: %d epochs, final InfoNCE %.4f", options.pretrain_epochs, loss_value)
    return loss_value


def fit(
    problem: Problem, graph: GraphTensors, split: pd.DataFrame, *, options: Options, device: str = "cpu"
) -> tuple[GRAPE, pd.DataFrame, dict]:
    """Train with early stopping on the validation score; return the best model, the epoch log, facts.

    Deterministic algorithms are switched on while training (warnings only where an op has
    none, e.g. some CUDA kernels): without them the CPU's multi-threaded accumulations in
    the backward pass (index_put / index_add) differ from run to run in the last bits. Their
    side effect of filling every new tensor's memory with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``) is switched off: it changes no
    result and took a third of an epoch's time.

    Validation runs every ``val_interval`` epochs and after the last; it scores the model on
    the learned graph of the last training search (:meth:`GRAPE.training_graph`: what the next
    training step would use; with ``gsl_refresh`` 1 a search of its own, as training searches
    every step). Patience counts epochs since the best validation.
    """
    import torch.utils.deterministic as deterministic

    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = False
    try:
        return _fit(problem, graph, split, options=options, device=device)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        deterministic.fill_uninitialized_memory = previous[2]


def _fit(
    problem: Problem, graph: GraphTensors, split: pd.DataFrame, *, options: Options, device: str
) -> tuple[GRAPE, pd.DataFrame, dict]:
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    rows = {s: problem.rows_of(split.loc[split["split"] == s, "condition"].astype(str).tolist())
            for s in ("train", "val")}
    row_context = problem.context_index if len(problem.contexts) > 1 else None
    graph = graph.to(device)
    model = build_model(graph, options).to(device)
    if options.observed_singles or options.singles == "kernel":
        set_observed_singles(model, problem, torch.cat([rows["train"], rows["val"]]), graph.num_nodes)
    facts: dict = {"pretrain_loss": pretrain(model, graph, options=options, generator=generator)}
    optimizer = _optimizer(model.parameters(), options)
    scheduler = _scheduler(optimizer, options)
    measured = problem.measured_nodes.to(device)
    delta = problem.delta.to(device)
    perturbed = problem.perturbed.to(device)
    sign = -1.0 if options.select_metric == "val_mse" else 1.0

    best, best_state, history = float("-inf"), None, []
    bar = tqdm(range(1, options.epochs + 1), desc="train", unit="epoch", file=sys.stderr, disable=None)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        order = rows["train"][torch.randperm(len(rows["train"]), generator=generator)]
        sums: dict[str, float] = {}
        for chunk in order.split(options.batch_size):
            chunk = chunk.to(device)
            optimizer.zero_grad(set_to_none=True)
            groups = context_groups(chunk, row_context)
            if len(groups) == 1:
                loss, terms = batch_loss(model, graph, perturbed, delta, measured, groups[0][1],
                                         context=groups[0][0], options=options)
            else:  # one forward pass per context, weighted by its share of the batch
                parts = [(len(g) / len(chunk), *batch_loss(model, graph, perturbed, delta, measured, g, context=k,
                                                           options=options)) for k, g in groups]
                loss = sum(w * part_loss for w, part_loss, _ in parts)
                terms = {key: sum(w * part_terms[key] for w, _, part_terms in parts) for key in parts[0][2]}
            loss.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            for key, value in {"loss": loss, **terms}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) * len(chunk)
        validate = epoch % options.val_interval == 0 or epoch == options.epochs
        val_mse = val_pearson = float("nan")
        if validate:
            with model.training_graph():  # the learned graph of the last training search (gsl_refresh > 1)
                val_mse, val_pearson = evaluate_rows(model, graph, perturbed, delta, measured,
                                                     rows["val"].to(device), row_context=row_context)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if validate:
                scheduler.step(val_mse)
        elif scheduler is not None:
            scheduler.step()
        n_train = len(rows["train"])
        record = {"epoch": epoch, "train_loss": sums["loss"] / n_train, "train_mse": sums["mse"] / n_train,
                  "train_graph": sums["graph"] / n_train, "val_mse": val_mse, "val_pearson_delta": val_pearson,
                  "lr": lr, "seconds": time.perf_counter() - start}
        history.append(record)
        if epoch == 1 or epoch % 25 == 0:
            log.info("epoch %d loss %.5f train_mse %.5f val_mse %.5f val_pearson_delta %.4f", epoch,
                     record["train_loss"], record["train_mse"], val_mse, val_pearson)
        if not validate:
            continue
        score = sign * record[options.select_metric]
        if best_state is None or score > best + 1e-9:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            facts["best_epoch"] = epoch
        since = epoch - facts["best_epoch"]  # epochs since the best validation (patience counts epochs)
        bar.set_postfix(val_mse=f"{val_mse:.4f}", val_r=f"{val_pearson:.3f}")
        if since >= options.patience:
            log.info("early stop at epoch %d; best %s at epoch %d", epoch, options.select_metric, facts["best_epoch"])
            break
    bar.close()
    model.load_state_dict(best_state)
    return model, pd.DataFrame(history), facts


def batch_loss(model: GRAPE, graph: GraphTensors, perturbed: torch.Tensor, delta: torch.Tensor,
               measured: torch.Tensor, rows: torch.Tensor, *, context: int, options: Options
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss and its terms on ``rows``, all of cell state ``context`` (one forward pass)."""
    pred, graph_loss, (aux_rows, aux_pred) = model(graph, perturbed[rows], context=context, with_graph_loss=True,
                                                    with_auxiliary=True)
    terms = loss_terms(pred[:, measured], delta[rows], options=options)
    terms["graph"] = graph_loss
    loss = (options.loss_mse * terms["mse"] + options.loss_huber * terms.get("huber", 0.0)
            + options.loss_direction * terms.get("direction", 0.0) + options.loss_pearson * terms.get("pearson", 0.0)
            + options.loss_graph * graph_loss)
    if len(aux_rows):  # doubles also predicted from the network's own singles (see GRAPE.forward)
        aux = loss_terms(aux_pred[:, measured], delta[rows][aux_rows], options=options)
        loss = loss + len(aux_rows) / len(rows) * (
            options.loss_mse * aux["mse"] + options.loss_huber * aux.get("huber", 0.0)
            + options.loss_direction * aux.get("direction", 0.0) + options.loss_pearson * aux.get("pearson", 0.0))
    return loss, terms


@torch.no_grad()
def evaluate_rows(model: GRAPE, graph: GraphTensors, perturbed: torch.Tensor, delta: torch.Tensor,
                  measured: torch.Tensor, rows: torch.Tensor, batch_size: int = 64, *,
                  row_context: torch.Tensor | None = None) -> tuple[float, float]:
    """MSE and mean per-row Pearson of changes on ``rows`` (eval mode), each row in its context."""
    if len(rows) == 0:
        return float("nan"), float("nan")
    model.eval()
    groups = context_groups(rows, row_context)
    pred = torch.cat([model(graph, perturbed[c], context=k)[:, measured]
                      for k, g in groups for c in g.split(batch_size)])
    target = delta[torch.cat([g for _, g in groups])]
    r = pearson_rows(pred, target)
    return float(torch.nn.functional.mse_loss(pred, target)), float(r[~r.isnan()].mean()) if (~r.isnan()).any() else float("nan")


@torch.no_grad()
def predict_delta(model: GRAPE, graph: GraphTensors, perturbed: torch.Tensor, *, device: str,
                  batch_size: int = 64, row_context: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted change from control of every node, ``[C, N]`` (eval mode), each row in its context."""
    model.eval()
    graph = graph.to(device)
    groups = context_groups(torch.arange(len(perturbed)), row_context)
    if len(groups) == 1:
        return torch.cat([model(graph, chunk.to(device), context=groups[0][0]).cpu()
                          for chunk in perturbed.split(batch_size)])
    out = torch.empty(len(perturbed), graph.num_nodes)
    for k, rows in groups:
        out[rows] = torch.cat([model(graph, chunk.to(device), context=k).cpu()
                               for chunk in perturbed[rows].split(batch_size)])
    return out


def predict(model: GRAPE, problem: Problem, graph: GraphTensors, *, device: str, batch_size: int = 64) -> np.ndarray:
    """Predicted mean expression (the row's context's control + change) of every row, ``[R, G]``."""
    if len(problem.contexts) == 1:
        delta = predict_delta(model, graph, problem.perturbed, device=device, batch_size=batch_size)
        return delta[:, problem.measured_nodes].numpy() + problem.control
    delta = predict_delta(model, graph, problem.perturbed, device=device, batch_size=batch_size,
                          row_context=problem.context_index)
    return delta[:, problem.measured_nodes].numpy() + problem.controls[problem.context_index.numpy()]


MEMBER_PREFIX = "member{}."


def ensemble_state(members) -> dict[str, torch.Tensor]:
    """One safetensors dict for the members of an ensemble: the first's ``state_dict`` under its own
    names (what :func:`load_model` reads), member ``k >= 1``'s under ``member<k>.``."""
    state = {}
    for k, model in enumerate(members):
        prefix = MEMBER_PREFIX.format(k) if k else ""
        state.update({prefix + name: v.contiguous().cpu() for name, v in model.state_dict().items()})
    return state


def load_model(model_yaml: Path, model_file: Path, *, device: str = "cpu", member: int = 0) -> GRAPE:
    """Rebuild a trained model from ``model.yaml`` and its ``state_dict`` (safetensors): member
    ``member`` of an ensemble (``train.ensemble``; the first by default, the only one without)."""
    from safetensors.torch import load_file

    meta = yaml.safe_load(Path(model_yaml).read_text())
    config = ModelConfig(**{**meta["model_config"], "modalities": tuple(meta["model_config"]["modalities"])})
    model = GRAPE(num_nodes=meta["num_nodes"], modality_dims=meta["modality_dims"], context_dim=meta["context_dim"],
                  node_types=tuple(meta["node_types"]), config=config)
    stored = load_file(str(model_file), device=device)
    prefix = MEMBER_PREFIX.format(member) if member else ""
    state = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix) and (prefix or not k.startswith("member"))}
    if not state:
        raise ValueError(f"{model_file}: no ensemble member {member} (members: {len(meta.get('ensemble') or [None])})")
    if state["observed_row"].dim() == 1:  # a model saved before contexts: one context
        state["observed_row"] = state["observed_row"].unsqueeze(0)
    for name in ("observed_row", "observed_delta", "observed_measured"):  # sized by the training data
        setattr(model, name, state[name])
    model.load_state_dict(state)
    return model.to(device).eval()


def load_ensemble(model_yaml: Path, model_file: Path, *, device: str = "cpu") -> list[GRAPE]:
    """Every member of a trained ensemble (one model when ``train.ensemble`` was 1); the train stage's
    predictions are the mean of theirs (:func:`predict_ensemble`)."""
    meta = yaml.safe_load(Path(model_yaml).read_text())
    return [load_model(model_yaml, model_file, device=device, member=k) for k in range(max(1, len(meta.get("ensemble") or [])))]


def predict_ensemble(members, problem: Problem, graph: GraphTensors, *, device: str, batch_size: int = 64) -> np.ndarray:
    """The mean of the members' :func:`predict`, in the order the train stage sums them."""
    total = None
    for model in members:
        pred = predict(model, problem, graph, device=device, batch_size=batch_size)
        total = pred if total is None else total + pred
    return total / len(members) if len(members) > 1 else total


def add_coexpression(tensors: GraphTensors, problem: Problem, train_conditions: list[str], *,
                     options: Options, chunk_size: int = 4096) -> GraphTensors:
    """Join co-expression edges from the training conditions' changes (every context's row) to the prior graph."""
    values = problem.delta[problem.rows_of(list(train_conditions))]
    edges = coexpression_edges(values, problem.measured_nodes, top_k=options.coexpression_k,
                               min_similarity=options.coexpression_min, chunk_size=chunk_size)
    log.info("co-expression edges from %d training conditions: %d", len(train_conditions), edges[0].shape[1])
    edge_index, weight = merge_edges([(tensors.edge_index, tensors.edge_weight), edges], tensors.num_nodes)
    return dataclasses.replace(tensors, edge_index=edge_index, edge_weight=weight)


@dataclass(frozen=True)
class Trained:
    """A trained model and what the train stage writes of it."""

    model: GRAPE  # the first member of the ensemble (the only one with ``ensemble`` 1)
    tensors: GraphTensors  # the model's input graph (prior plus co-expression edges), on the CPU
    history: pd.DataFrame  # one row per epoch (and member, column ``member``, with ``ensemble`` above 1)
    facts: dict  # best_epoch, pretrain_loss of the first member; ``members``: each member's seed and facts
    predictions: np.ndarray  # [R, G] predicted mean expression of every row of the problem
    network: pd.DataFrame  # the learned network of the first context (grape.graph.network.export_network)
    device: str
    members: tuple[GRAPE, ...] = ()  # every member, the first included (``ensemble``)


def train_model(problem: Problem, graph: Graph, split: pd.DataFrame, *, options: Options,
                device: str = "cpu") -> Trained:
    """Train on ``problem`` over ``graph`` (its variant checked), predict every row, export the network.

    ``options`` are the resolved options (:meth:`Options.resolved`); co-expression edges
    (``coexpression_k``) come from the training conditions of ``split`` only.
    """
    from grape.graph.network import export_network

    check_graph(graph, options)
    control, measured_flag = control_by_node(problem, graph.num_nodes)
    tensors = graph_tensors(graph, control, measured_flag)
    if options.coexpression_k > 0:
        train_conditions = split.loc[split["split"] == "train", "condition"].tolist()
        tensors = add_coexpression(tensors, problem, train_conditions, options=options)
    log.info("training %s on %s: graph variant %s, %d nodes, %d prior edges, %d relations, %d conditions in "
             "%d context(s)", options.ablation or "full model", device, graph.variant, tensors.num_nodes,
             tensors.edge_index.shape[1], len(tensors.relations), len(dict.fromkeys(problem.conditions)),
             len(problem.contexts))
    members, histories, member_facts = [], [], []
    for k in range(options.ensemble):  # member k: seed + k; the mean of the members' predictions
        member_options = dataclasses.replace(options, seed=options.seed + k)
        if options.ensemble > 1:
            log.info("ensemble member %d of %d (seed %d)", k + 1, options.ensemble, member_options.seed)
        model, history, facts = fit(problem, tensors, split, options=member_options, device=device)
        members.append(model)
        histories.append(history.assign(member=k) if options.ensemble > 1 else history)
        member_facts.append({"seed": member_options.seed, **facts})
    predictions = predict_ensemble(members, problem, tensors, device=device)
    calibration = None
    if options.calibrate != "none":
        predictions, fitted = calibrate(problem, split, predictions, per_gene=options.calibrate == "validation_gene",
                                        scale=() if options.calibrate_scale == "none" else (options.calibrate_scale,),
                                        anchor=options.calibrate_anchor, seen1=options.calibrate_seen1,
                                        seen0=options.calibrate_seen0)
        calibration = fitted.record()
        log.info("calibrated toward the baselines on the validation conditions: lambda %s (validation rows %s)%s%s",
                 calibration["lambda"], calibration["n_val_rows"],
                 f", per gene {calibration['per_gene']}" if "per_gene" in calibration else "",
                 f", scale {calibration['scale']}" if "scale" in calibration else "")
    history = pd.concat(histories, ignore_index=True)
    if options.ensemble > 1:
        history = history[["member", *[c for c in history.columns if c != "member"]]]
    facts = {**member_facts[0], "members": member_facts, "calibration": calibration}
    network = export_network(members[0], tensors.to(device), genes=graph.genes, biotypes=graph.biotypes,
                             k=options.network_k)
    return Trained(members[0], tensors, history, facts, predictions, network, str(device), tuple(members))


def model_record(trained: Trained, problem: Problem, *, options: Options, graph_variant: str) -> dict:
    """The content of ``model.yaml``: resolved options and shapes (enough for :func:`load_model`), the best epoch."""
    model, tensors, history, facts = trained.model, trained.tensors, trained.history, trained.facts
    first = history if "member" not in history.columns else history.loc[history["member"] == 0]
    best = first.loc[first["epoch"] == facts["best_epoch"]].iloc[0]

    def best_of(member: int, epoch: int) -> dict:
        rows = history if "member" not in history.columns else history.loc[history["member"] == member]
        row = rows.loc[rows["epoch"] == epoch].iloc[0]
        return {"best_val_mse": float(row["val_mse"]), "best_val_pearson_delta": float(row["val_pearson_delta"])}

    members = [{"member": k, "seed": int(f["seed"]), "best_epoch": int(f["best_epoch"]), **best_of(k, f["best_epoch"])}
               for k, f in enumerate(facts.get("members", []))]
    return {
        "grape_version": __version__, "model": "GRAPE", "variant": options.ablation or "full",
        "graph_variant": graph_variant,
        "options": dataclasses.asdict(options),
        "model_config": {**dataclasses.asdict(model.config), "modalities": list(model.config.modalities)},
        "num_nodes": tensors.num_nodes, "modality_dims": {k: int(v.shape[1]) for k, v in tensors.modalities.items()},
        "context_dim": int(tensors.context_dim), "node_types": list(tensors.node_types),
        "contexts": list(problem.contexts),
        "relations": [list(r) for r in tensors.relations], "prior_edges": int(tensors.edge_index.shape[1]),
        "best_epoch": int(facts["best_epoch"]), "best_val_mse": float(best["val_mse"]),
        "best_val_pearson_delta": float(best["val_pearson_delta"]),
        "pretrain_loss": facts["pretrain_loss"], "device": trained.device,
        "ensemble": members,  # each member's seed and selected epoch (the first is the fields above)
        "calibration": facts.get("calibration"),  # train.calibrate: lambda per kind (None: not calibrated)
    }


def prediction_table(problem: Problem, split: pd.DataFrame, predictions: np.ndarray) -> ad.AnnData:
    """``predictions.h5ad``: every (context, condition) row with obs condition, context, split, subgroup."""
    split_of = split.set_index("condition")
    obs = pd.DataFrame({"condition": problem.conditions, "context": problem.row_contexts,
                        "split": split_of.loc[problem.conditions, "split"].to_numpy(),
                        "subgroup": split_of.loc[problem.conditions, "subgroup"].to_numpy()},
                       index=pd.Index(row_names(problem.conditions, problem.row_contexts)))
    return ad.AnnData(X=predictions.astype(np.float32), obs=obs, var=pd.DataFrame(index=problem.var_names))
