"""Validated forward/backward ops backed by the compiled kernels (and BLAS for matrix products).

Every function has a twin of the same name and signature in ``cybn.reference`` (plain NumPy).
Inputs are checked before any kernel runs (see ``cybn._validation`` for the policy: float32/float64
only, non-contiguous input is copied, shape errors name the shapes).
"""
from .batchnorm import *  # noqa: F401,F403
from .softmax import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .activation import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .augment import *  # noqa: F401,F403
