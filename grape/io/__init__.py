"""Files and the network: atomic writes, reliable downloads, dataset archives."""
