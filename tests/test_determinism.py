"""Whole training runs are bit-identical for any thread count (fixed work splits everywhere)."""
import numpy as np

import cybn
from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7


def train(threads, steps=20, batch=8, dtype=np.float32):
    """cnn7 with BN everywhere on tiny random data; width 16 takes conv's Winograd path too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, batch, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, (steps, batch))
    with cybn.num_threads(threads):
        model = cnn7(bn="all", init="he", seed=0, width=16, hidden=64, dtype=dtype)
        loss_fn = SoftmaxCrossEntropy()
        opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
        losses = []
        for i in range(steps):
            losses.append(loss_fn.forward(model.forward(x[i]), y[i]))
            model.backward(loss_fn.backward())
            opt.step()
    return losses, model.state_dict()


def test_twenty_steps_bitwise_identical_for_1_and_2_threads():
    losses1, state1 = train(1)
    losses2, state2 = train(2)
    assert losses1 == losses2
    assert state1.keys() == state2.keys()
    for k in state1:
        assert np.array_equal(state1[k], state2[k]), k
    # the run trained (the comparison is not between two untouched initialisations)
    assert losses1[-1] != losses1[0]
