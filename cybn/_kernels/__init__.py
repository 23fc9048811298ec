"""Compiled Cython kernels. They trust their inputs: call them only through ``cybn.functional``."""
