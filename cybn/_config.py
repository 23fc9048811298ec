"""``cybn.show_config()``: what a bug report or a benchmark needs to know about this install."""
import os
import platform
import sys

import numpy as np
from threadpoolctl import threadpool_info

from ._kernels._openmp import openmp_enabled
from ._threads import (ENV_VAR, IDLE_SPIN_VAR, available_cores, get_num_threads, idle_spin_enabled,
                       kernel_threads, under_cpu_quota)


def config():
    """The build and runtime configuration as a dict (versions, OpenMP, threads, BLAS)."""
    from . import __version__

    get_num_threads()  # make sure our BLAS limit is applied before it is reported
    infos = threadpool_info()
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
        for info in infos if info.get("user_api") == "blas"
    ]
    # The OpenMP runtime the kernels run on: another library's (e.g. torch's libgomp, when torch
    # was imported first) keeps the wait policy it was loaded with (idle threads may spin).
    openmp_runtimes = [info.get("filepath") for info in infos if info.get("user_api") == "openmp"]
    return {
        "cybn": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "openmp": openmp_enabled(),
        "cores_available": available_cores(),
        "num_threads": get_num_threads(),
        "kernel_threads": kernel_threads(),
        "idle_spin": idle_spin_enabled(),
        "cpu_quota": under_cpu_quota(),
        "blas": blas,
        # e.g. OPENBLAS_CORETYPE picks OpenBLAS's kernel instead of its CPU detection: on an
        # AVX-512 machine "Haswell" (AVX2) took the 1-thread cnn7 step from ~100 to ~170 ms
        # (two benchmark runs six minutes apart, 2026-12-03)
        "blas_environment": {k: v for k, v in sorted(os.environ.items())
                             if k.startswith("OPENBLAS_")},
        "openmp_runtimes": openmp_runtimes,
    }


def show_config(file=None):
    """Print the version, OpenMP status, thread counts and the BLAS library/kernel in use."""
    c = config()
    out = file or sys.stdout
    omp = "enabled" if c["openmp"] else "DISABLED (compiler had no OpenMP: kernels run serially)"
    lines = [
        f"cybn {c['cybn']}  (python {c['python']}, numpy {c['numpy']})",
        f"platform: {c['platform']}",
        f"OpenMP: {omp}",
        f"threads: {c['num_threads']} (set_num_threads / {ENV_VAR}; kernels use {c['kernel_threads']}; "
        f"{c['cores_available']} cores available)",
    ]
    spin = ("on (SCHED_IDLE threads keep the team's cores awake between kernels)" if c["idle_spin"]
            else "off, under a CPU quota" if c["cpu_quota"] else "off")
    lines.append(f"idle spinners: {spin} ({IDLE_SPIN_VAR})")
    for path in c["openmp_runtimes"]:
        lines.append(f"OpenMP runtime: {path}")
    if not c["blas"]:
        lines.append("BLAS: none reported by threadpoolctl")
    for b in c["blas"]:
        lines.append(f"BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
                     f"{b['num_threads']} threads ({b['filepath']})")
    if c["blas_environment"]:
        lines.append("BLAS settings from the environment: "
                     + ", ".join(f"{k}={v}" for k, v in c["blas_environment"].items()))
    print("\n".join(lines), file=out)
