"""Build the Cython kernels with optimisation and, where the compiler has it, OpenMP.

Every ``cybn/_kernels/*.pyx`` becomes one extension module. OpenMP support is probed by
compiling a tiny program; without it (e.g. Apple clang without libomp) the kernels are built
serially and ``cybn.show_config()`` reports it. ``CYBN_NO_OPENMP=1`` forces a serial build.
"""
import glob
import os
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

KERNEL_DIR = os.path.join("cybn", "_kernels")


def openmp_flags():
    """Return (compile_args, link_args) that enable OpenMP, or None if the compiler lacks it."""
    if os.environ.get("CYBN_NO_OPENMP", "") not in ("", "0"):
        return None
    compiler = new_compiler()
    customize_compiler(compiler)
    flags = ["/openmp"] if compiler.compiler_type == "msvc" else ["-fopenmp"]
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(textwrap.dedent("""
                #include <omp.h>
                int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
            """))
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=flags)
    except Exception:  # any compile or link failure means: no usable OpenMP
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return flags, ([] if compiler.compiler_type == "msvc" else flags)


def extensions():
    from Cython.Build import cythonize

    omp = openmp_flags()
    if omp is None:
        print("cybn: building WITHOUT OpenMP; kernels will run on one thread", file=sys.stderr)
        compile_args, link_args = [], []
    else:
        compile_args, link_args = omp
    if sys.platform != "win32":
        # -O3 but never -ffast-math: it flushes subnormals process-wide and breaks IEEE semantics.
        compile_args = compile_args + ["-O3"]
    sources = sorted(glob.glob(os.path.join(KERNEL_DIR, "*.pyx")))
    # Developer convenience: CYBN_BUILD_ONLY=batchnorm,softmax rebuilds just those kernels.
    only = [s for s in os.environ.get("CYBN_BUILD_ONLY", "").split(",") if s]
    if only:
        sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in only]
    exts = [
        Extension(
            "cybn._kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=[KERNEL_DIR],  # _common.h, shared by every kernel
            depends=glob.glob(os.path.join(KERNEL_DIR, "*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
