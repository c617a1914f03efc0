"""The workflow's variants: model variants (ablations) and the graph variants they train on.

A model variant is the full model or an ablation, a named set of train option overrides
(:data:`ABLATIONS`). A graph variant is a graph the graph stage builds
(``results/<run>/graph/<graph variant>/graph.safetensors``), :data:`GRAPH_VARIANTS`: it says
which feature modalities the similarity prior is built from, whether node types follow the
biotype groups, and whether the similarity prior and the prior sources (``graph.priors``) are
part of the graph: the one-modality variants rebuild the similarity part only and keep the
sources; ``no_prior_sources`` (similarity prior only) and ``priors_only`` (sources only) are
the prior-source ablations of the graph, built by name (``grape graph --variant priors_only``). A model variant trains on the graph variant that matches its resolved
``train.modalities`` and ``train.biotype`` (:func:`model_graph_variant`), so the text-only
model sees no DNA similarity through its prior, and the no-biotype model has one node type.
Model variants that change neither (no_gsl, no_pretraining, joint_doubles) share the full graph.

This module needs only the standard library: the workflow reads it while Snakemake parses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Gene feature modalities, in the order the graph stores them.
MODALITIES = ("text", "dna")

#: Model variants: each ablation is a set of train option overrides on the full model.
ABLATIONS: dict[str, dict] = {
    "no_biotype": {"biotype": False},
    "no_gsl": {"gsl": False},
    "text_only": {"modalities": ["text"]},
    "dna_only": {"modalities": ["dna"]},
    "no_pretraining": {"pretrain_epochs": 0},
    "joint_doubles": {"doubles": "joint"},
    "kernel_singles": {"singles": "kernel"},
    "no_prior_sources": {},
    "priors_only": {},
}

#: Model variants that train on a graph variant of their own by name (the prior-source
#: ablations: the same model on the similarity prior alone, or on the prior sources alone).
#: Without ``graph.priors`` the ``no_prior_sources`` graph equals the full one.
NAMED_GRAPHS: dict[str, str] = {"no_prior_sources": "no_prior_sources", "priors_only": "priors_only"}


@dataclass(frozen=True)
class GraphVariant:
    """What a graph variant changes in the graph stage's output."""

    modalities: tuple[str, ...] = MODALITIES  # feature modalities the prior edges are built from
    biotype: bool = True  # node types by biotype group (graph.biotype_groups); False: one node type, "gene"
    similarity: bool = True  # the feature-similarity prior (and graph.similarity); False: the sources alone
    sources: bool = True  # the prior sources of graph.priors; False: the similarity prior alone


#: Graph variants by name: the full graph and the graphs of the ablations that change the graph.
GRAPH_VARIANTS: dict[str, GraphVariant] = {
    "full": GraphVariant(),
    "text_only": GraphVariant(modalities=("text",)),
    "dna_only": GraphVariant(modalities=("dna",)),
    "no_biotype": GraphVariant(biotype=False),
    "no_prior_sources": GraphVariant(sources=False),
    "priors_only": GraphVariant(similarity=False),
}

#: Node type of every gene in a graph variant without biotype groups.
SINGLE_NODE_TYPE = "gene"


def graph_variant_for(*, modalities: Sequence[str], biotype: bool) -> str:
    """Name of the graph variant whose prior comes from ``modalities`` (any order) with or without biotypes."""
    wanted = set(modalities)
    for name, variant in GRAPH_VARIANTS.items():
        if not (variant.similarity and variant.sources):  # the prior-source ablations: asked for by name
            continue
        if set(variant.modalities) == wanted and variant.biotype == bool(biotype):
            return name
    raise ValueError(
        f"no graph variant builds a prior from {'+'.join(modalities)} with "
        f"{'biotype node types' if biotype else 'one node type'} (graph variants: "
        + ", ".join(f"{n} = {'+'.join(v.modalities)}{'' if v.biotype else ', one node type'}"
                    for n, v in GRAPH_VARIANTS.items()) + ")")


def model_graph_variant(variant: str, train: Mapping | None = None) -> str:
    """The graph variant model variant ``variant`` (``full`` or an ablation) trains on.

    ``train`` is the config's train section (``modalities`` and ``biotype``, defaults: both
    modalities, biotypes on); the ablation's overrides apply on top of it.
    """
    if variant not in ("", "full") and variant not in ABLATIONS:
        raise ValueError(f"unknown model variant {variant!r} (known: full, {', '.join(ABLATIONS)})")
    if variant in NAMED_GRAPHS:
        return NAMED_GRAPHS[variant]
    train = train or {}
    settings = {"modalities": train.get("modalities") or MODALITIES, "biotype": train.get("biotype", True),
                **ABLATIONS.get(variant, {})}
    return graph_variant_for(modalities=settings["modalities"], biotype=settings["biotype"])
