"""Experiments built on the Trainer: the CIFAR-10 recipe and the small-initialization study."""
