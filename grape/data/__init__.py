"""The perturbation dataset: reading and checking it, normalisation, splits, the preflight checks."""
