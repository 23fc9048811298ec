"""cybn: batch-normalized CNNs on multicore CPUs, with Cython + OpenMP kernels.

Floors, each importing only its own or lower ones (docs/ARCHITECTURE.md; tests/test_architecture.py
checks it): ``cli`` -> ``experiments`` -> ``recipe`` -> ``train`` -> ``nn`` / ``data`` ->
``functional`` (validated ops) -> base modules -> ``_kernels`` (Cython, nogil, prange).
``reference`` is a plain-NumPy twin of ``functional``: the test oracle and the readable maths.
"""
import os

__version__ = "0.1.0"

# Idle OpenMP threads must sleep, not spin: our kernels alternate with BLAS calls, whose threads
# need those cores. Spinning workers made a training step 1.3x slower here. This only takes
# effect if no library loaded libgomp before cybn, and never overrides the user's own choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._threads import get_num_threads, num_threads, set_num_threads
from ._config import show_config
from . import data, functional, reference
from . import nn
from .nn import *  # noqa: F401,F403  (layers, Sequential, SGD, schedules, cnn7)

__all__ = ["__version__", "get_num_threads", "set_num_threads", "num_threads", "show_config",
           "data", "functional", "reference"]
__all__ += ["nn"] + nn.__all__

from .deploy import load_model  # noqa: E402  (the model of a run folder written by `cybn train`)

__all__ += ["load_model"]
