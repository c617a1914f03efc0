"""The biotype heterograph: prior edges, assembly, saved tensors; learned-network export and recovery."""
