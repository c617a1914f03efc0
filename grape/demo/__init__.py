"""The simulated demo organism and its Perturb-seq screen."""
