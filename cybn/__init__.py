"""cybn: batch-normalized CNNs on multicore CPUs, with Cython + OpenMP kernels.

Floors, each calling only the one below: ``cli`` / ``experiments`` -> ``train`` -> ``nn`` (layers,
models, optimizers) -> ``functional`` (validated ops) -> ``_kernels`` (Cython, nogil, prange).
``reference`` is a plain-NumPy twin of ``functional``: the test oracle and the readable maths.
"""
__version__ = "0.1.0"

from ._threads import get_num_threads, num_threads, set_num_threads
from ._config import show_config
from . import functional, reference
from . import nn
from .nn import *  # noqa: F401,F403  (layers, Sequential, SGD, schedules, cnn7)

__all__ = ["__version__", "get_num_threads", "set_num_threads", "num_threads", "show_config",
           "functional", "reference"]
__all__ += ["nn"] + nn.__all__
