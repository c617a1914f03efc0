"""Train the heterogeneous GNN on pseudobulk deltas of the training conditions.

The model learns each condition's mean expression change from the control mean
(over all measured genes) from training conditions only; validation conditions
choose the epoch (early stopping on validation MSE); test conditions are only
predicted. The split comes from ``grape split``. Outputs: the model as ``state_dict`` in safetensors with its
resolved options in YAML, a per-epoch TSV log, and predictions for every condition.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
import yaml

from grape import __version__
from grape._io import atomic_path, write_text_atomic
from grape.cli import PathArg
from grape.data import DatasetError, DatasetOptions, condition_genes, gene_symbols, pseudobulk, read_dataset
from grape.embed import choose_device
from grape.graph import Graph, load_graph
from grape.model import GraphTensors, PerturbationHGNN, normalized_adjacency
from grape.split import read_split

log = logging.getLogger(__name__)

CLI_PATHS = {
    "dataset": PathArg("single-cell h5ad (GEARS contract)"),
    "graph": PathArg("graph from `grape graph` (.safetensors)"),
    "split": PathArg("split table from `grape split` (condition, split, subgroup)"),
    "out_dir": PathArg("output directory: model.safetensors, model.yaml, history.tsv, predictions.h5ad"),
}


@dataclass(frozen=True)
class Options(DatasetOptions):
    """Options of the train stage (config sections ``dataset`` and ``train``)."""

    seed: int = field(default=0, metadata={"help": "seed of initialisation, batching and dropout"})
    epochs: int = field(default=300, metadata={"help": "maximum number of epochs"})
    patience: int = field(default=60, metadata={"help": "stop after this many epochs without a better validation loss"})
    batch_size: int = field(default=16, metadata={"help": "conditions per optimisation step"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    hidden: int = field(default=64, metadata={"help": "hidden size of the GNN"})
    layers: int = field(default=2, metadata={"help": "message-passing layers"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in message passing"})
    device: str = field(default="auto", metadata={"help": "torch device: auto, cpu, cuda, cuda:1"})


def _zscore(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0, keepdim=True)) / x.std(0, keepdim=True).clamp(min=1e-6)


def graph_tensors(graph: Graph, control: np.ndarray, measured: np.ndarray) -> GraphTensors:
    """Global-order features (text, DNA z-scores, control level, measured flag) and adjacencies."""
    data = graph.data
    n = len(graph.genes)
    node_types = tuple(data.node_types)
    text = torch.zeros(n, data[node_types[0]].x_text.shape[1])
    dna = torch.zeros(n, data[node_types[0]].x_dna.shape[1])
    node_type = torch.zeros(n, dtype=torch.long)
    for i, t in enumerate(node_types):
        gid = data[t].global_id
        text[gid], dna[gid], node_type[gid] = data[t].x_text, data[t].x_dna, i
    ctrl = torch.as_tensor(control, dtype=torch.float32).unsqueeze(1)
    flag = torch.as_tensor(measured, dtype=torch.float32).unsqueeze(1)
    features = torch.cat([text, _zscore(dna), _zscore(ctrl), flag], dim=1)
    relations, adjacency = [], []
    for edge_type in data.edge_types:
        s, _, d = edge_type
        ei = data[edge_type].edge_index
        if ei.shape[1] == 0:
            continue
        src, dst = data[s].global_id[ei[0]], data[d].global_id[ei[1]]
        relations.append(edge_type)
        adjacency.append(normalized_adjacency(src, dst, data[edge_type].edge_weight, n))
    return GraphTensors(features, node_type, node_types, tuple(relations), tuple(adjacency))


@dataclass(frozen=True)
class Problem:
    """Pseudobulk targets aligned with the graph's nodes."""

    conditions: list[str]
    perturbed: torch.Tensor  # [C, 2] node ids, -1 padded
    delta: torch.Tensor  # [C, G] mean change from control of measured genes
    control: np.ndarray  # [G] control mean
    measured_nodes: torch.Tensor  # [G] node id of each measured gene
    var_names: list[str]


def build_problem(adata: ad.AnnData, graph: Graph, *, options: DatasetOptions) -> Problem:
    """Pseudobulk the dataset and map genes and perturbations onto graph nodes.

    Raises :class:`DatasetError` naming the gene when a measured or perturbed gene has no node.
    """
    node = {g: i for i, g in enumerate(graph.genes)}
    symbols = gene_symbols(adata, options=options)
    absent = [g for g in symbols if g not in node]
    if absent:
        raise DatasetError(f"measured genes without a graph node: {', '.join(absent[:10])}")
    means = pseudobulk(adata, options=options)
    control = means.loc[options.control].to_numpy(dtype=np.float32)
    conditions = [c for c in means.index if c != options.control]
    perturbed = torch.full((len(conditions), 2), -1, dtype=torch.long)
    for row, cond in enumerate(conditions):
        genes = condition_genes(cond, options=options)
        missing = [g for g in genes if g not in node]
        if missing:
            raise DatasetError(f"condition {cond!r} names genes absent from the annotation/graph: {', '.join(missing)}")
        if len(genes) > 2:
            raise DatasetError(f"condition {cond!r} perturbs more than two genes")
        perturbed[row, : len(genes)] = torch.tensor([node[g] for g in genes])
    delta = torch.as_tensor(means.loc[conditions].to_numpy(dtype=np.float32) - control)
    return Problem(conditions, perturbed, delta, control,
                   torch.tensor([node[g] for g in symbols]), adata.var_names.astype(str).tolist())


def fit(
    problem: Problem, graph: GraphTensors, split: pd.DataFrame, *, options: Options, device: str = "cpu"
) -> tuple[PerturbationHGNN, pd.DataFrame]:
    """Train with early stopping on validation MSE; return the best model and the epoch log."""
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    index = {c: i for i, c in enumerate(problem.conditions)}
    rows = {s: torch.tensor([index[c] for c in split.loc[split["split"] == s, "condition"]], dtype=torch.long)
            for s in ("train", "val")}
    model = PerturbationHGNN(
        num_nodes=graph.num_nodes, in_dim=graph.features.shape[1], node_types=graph.node_types,
        relations=graph.relations, hidden=options.hidden, layers=options.layers, dropout=options.dropout,
    ).to(device)
    graph = graph.to(device)
    measured = problem.measured_nodes.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        pred = model(graph, problem.perturbed[idx].to(device))[:, measured]
        return nn_mse(pred, problem.delta[idx].to(device))

    best, best_state, since, history = float("inf"), None, 0, []
    for epoch in range(1, options.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = rows["train"][torch.randperm(len(rows["train"]), generator=generator)]
        total = 0.0
        for chunk in order.split(options.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(chunk)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(chunk)
        model.eval()
        with torch.no_grad():
            val = loss_of(rows["val"]).item()
        train_loss = (total / len(rows["train"])).item()
        history.append({"epoch": epoch, "train_mse": train_loss, "val_mse": val,
                        "seconds": time.perf_counter() - start})
        if val < best - 1e-9:
            best, since = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
        if epoch == 1 or epoch % 25 == 0:
            log.info("epoch %d train_mse %.5f val_mse %.5f (best %.5f)", epoch, train_loss, val, best)
        if since >= options.patience:
            log.info("early stop at epoch %d; best validation MSE %.5f", epoch, best)
            break
    model.load_state_dict(best_state)
    return model, pd.DataFrame(history)


def nn_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over conditions and genes."""
    return torch.nn.functional.mse_loss(pred, target)


def predict(model: PerturbationHGNN, problem: Problem, graph: GraphTensors, *, device: str, batch_size: int = 64) -> np.ndarray:
    """Predicted mean expression (control + change) of every condition, ``[C, G]``."""
    model.eval()
    graph = graph.to(device)
    measured = problem.measured_nodes.to(device)
    out = []
    with torch.no_grad():
        for chunk in torch.arange(len(problem.conditions)).split(batch_size):
            out.append(model(graph, problem.perturbed[chunk].to(device))[:, measured].cpu())
    return torch.cat(out).numpy() + problem.control


def run(*, options: Options, dataset: Path, graph: Path, split: Path, out_dir: Path) -> None:
    """Train, and write the model, the log and predictions."""
    out_dir = Path(out_dir)
    adata = read_dataset(dataset, options=options)
    loaded = load_graph(Path(graph))
    problem = build_problem(adata, loaded, options=options)
    split = read_split(split, problem.conditions)
    control = np.zeros(len(loaded.genes), dtype=np.float32)
    measured_flag = np.zeros(len(loaded.genes), dtype=np.float32)
    control[problem.measured_nodes.numpy()] = problem.control
    measured_flag[problem.measured_nodes.numpy()] = 1.0
    tensors = graph_tensors(loaded, control, measured_flag)
    device = choose_device(options.device)
    log.info("training on %s: %d nodes, %d relations, %d conditions", device, tensors.num_nodes,
             len(tensors.relations), len(problem.conditions))
    model, history = fit(problem, tensors, split, options=options, device=device)
    predictions = predict(model, problem, tensors, device=device)

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "history.tsv") as tmp:
        history.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    from safetensors.torch import save_file

    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    write_text_atomic(out_dir / "model.yaml", yaml.safe_dump({
        "grape_version": __version__, "model": "PerturbationHGNN", "options": dataclasses.asdict(options),
        "num_nodes": tensors.num_nodes, "in_dim": int(tensors.features.shape[1]),
        "node_types": list(tensors.node_types), "relations": [list(r) for r in tensors.relations],
        "best_epoch": int(history["val_mse"].idxmin() + 1), "best_val_mse": float(history["val_mse"].min()),
    }, sort_keys=False))
    split_of = split.set_index("condition")
    obs = pd.DataFrame({"split": split_of.loc[problem.conditions, "split"].to_numpy(),
                        "subgroup": split_of.loc[problem.conditions, "subgroup"].to_numpy()},
                       index=pd.Index(problem.conditions, name="condition"))
    pred = ad.AnnData(X=predictions.astype(np.float32), obs=obs, var=pd.DataFrame(index=problem.var_names))
    with atomic_path(out_dir / "predictions.h5ad") as tmp:
        pred.write_h5ad(tmp)
