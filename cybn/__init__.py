"""cybn: batch-normalized CNNs on multicore CPUs, with Cython + OpenMP kernels.

Floors, each importing only its own or lower ones (docs/ARCHITECTURE.md; tests/test_architecture.py
checks it): ``cli`` -> ``experiments`` -> ``recipe`` -> ``train`` -> ``nn`` / ``data`` ->
``functional`` (validated ops) -> base modules -> ``_kernels`` (Cython, nogil, prange).
``reference`` is a plain-NumPy twin of ``functional``: the test oracle and the readable maths.
"""
__version__ = "0.1.0"

# The OpenMP wait policy is left to the runtime (libgomp: idle threads spin ~300,000 times, then
# sleep) and to the user (OMP_WAIT_POLICY, GOMP_SPINCOUNT). Every GEMM runs inside cybn's own
# OpenMP threads, so no other pool needs the cores between kernels, and the brief spin lets the
# next kernel start without waking sleeping threads: a 2-thread cnn7 step took 81 ms against
# 89 ms with OMP_WAIT_POLICY=PASSIVE (fresh processes, 3 each, 2026-12-01).

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
