"""Plain-NumPy reference implementation of every op: the test oracle and the readable maths.

Same names and signatures as ``cybn.functional``; computes in the input's dtype unless a
function says otherwise, so tests run it in float64 and compare. Clarity over speed.
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
