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


def _team_kernel_outputs(rng_seed=1):
    """Outputs of every kernel whose phases share work through a cybn_team (dynamic pieces,
    spin barriers): BN + ReLU (+ pool) forward and backward on planes and on rows, and the
    Winograd conv forward and backward."""
    from cybn import functional as F
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((16, 32, 16, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dp = rng.standard_normal((16, 32, 8, 8)).astype(np.float32)
    rows = rng.standard_normal((256, 256)).astype(np.float32)
    drows = rng.standard_normal(rows.shape).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    w2, b2 = np.ones(256, np.float32), np.zeros(256, np.float32)
    # 64 output channels: enough work that conv2d's forward also gets 2 threads
    cw = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    cdy = rng.standard_normal((16, 64, 16, 16)).astype(np.float32)
    out = []
    y, mean, var = F.batch_norm_relu_train(x, w, b)
    out += [y, mean, var, *F.batch_norm_relu_backward(dy, x, w, b, mean, var)]
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    out += [y, code, *F.batch_norm_relu_pool_backward(dp, code, x, w, b, mean, var)]
    y, mean, var = F.batch_norm_relu_train(rows, w2, b2)
    out += [y, *F.batch_norm_relu_backward(drows, rows, w2, b2, mean, var)]
    out += [F.conv2d(x, cw, padding=1), *F.conv2d_backward(cdy, x, cw, padding=1)]
    return out


def test_team_kernels_bitwise_identical_over_repeated_2_thread_calls():
    # which thread takes which piece varies from call to call; no split may change a bit
    with cybn.num_threads(1):
        want = _team_kernel_outputs()
    with cybn.num_threads(2):
        for _ in range(25):
            got = _team_kernel_outputs()
            assert len(got) == len(want)
            for i, (a, b) in enumerate(zip(want, got)):
                assert np.array_equal(a, b), i
