"""Compiled Cython kernels. They trust their inputs: call them only through ``cybn.functional``.

Importing a source tree whose kernels were never compiled (a fresh checkout on ``sys.path``)
raises an ImportError that says how to build them, instead of a bare ModuleNotFoundError later.
"""
import importlib.util
import os


def _missing_kernels():
    here = os.path.dirname(os.path.abspath(__file__))
    names = sorted(f[:-4] for f in os.listdir(here) if f.endswith(".pyx"))
    return [n for n in names if importlib.util.find_spec(f"{__name__}.{n}") is None]


_missing = _missing_kernels()
if _missing:
    raise ImportError(
        f"cybn's compiled kernels ({', '.join(_missing)}) are missing in {os.path.dirname(os.path.abspath(__file__))}: "
        "this looks like an unbuilt source tree. Build it with `pip install -e .` (or, in the checkout, "
        "`python setup.py build_ext --inplace`), or run from outside the checkout to use an installed cybn.")
del _missing
