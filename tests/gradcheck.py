"""Finite differences shared by the gradient tests (float64)."""
import numpy as np


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``a`` (a contiguous array,
    modified in place and restored)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g
