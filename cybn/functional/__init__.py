"""Validated forward/backward ops: the only caller of the compute kernels (which run their matrix
products as single-threaded BLAS GEMMs); dropout, two memory-bound passes, is plain NumPy.

Every function has a twin of the same name and signature in ``cybn.reference`` (plain NumPy).
The per-rank pieces of synchronized BN are not re-exported here: they live in the submodule
``sync_batchnorm`` (twin: ``cybn.reference.sync_batchnorm``).
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
from .optim import *  # noqa: F401,F403
from ._memory import (release as release_buffers, set_limit as set_buffer_pool_limit,  # noqa: F401
                      unpooled as unpooled_outputs)
