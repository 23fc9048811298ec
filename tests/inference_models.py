"""Models with trained-looking BatchNorm state, shared by the fusion, inference and export tests."""
import numpy as np

from cybn import nn

BN_PLACEMENTS = ("all", "last", "none")


def with_statistics(model, x, rng, steps=3):
    """``model`` in eval mode after ``steps`` training forwards on shifted, scaled copies of ``x``
    (non-trivial running means and variances) with random BN gammas (some negative) and betas."""
    for _, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1D, nn.BatchNorm2D)) and m.affine:
            c = m.num_features
            m.params["weight"][:] = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
            m.params["bias"][:] = rng.standard_normal(c)
    for _ in range(steps):
        model.forward((x * rng.uniform(0.5, 3.0) + rng.uniform(-1.0, 1.0)).astype(x.dtype))
    return model.eval()


def cnn7_case(bn, dtype, rng, batch=6):
    """cnn7 (He init, dropout) with BN statistics, and an input batch."""
    x = rng.standard_normal((batch, 3, 32, 32)).astype(dtype)
    model = nn.cnn7(bn=bn, init="he", seed=int(rng.integers(1000)), dtype=dtype, dropout=0.25)
    return with_statistics(model, x, rng), x


def odd_cases(dtype, rng, batch=5):
    """name -> (model in eval mode with BN statistics, input, BN layers left after fusion)."""
    kw = dict(dtype=dtype, rng=rng, init="he")
    bn = dict(dtype=dtype)
    cases = {
        # no-bias conv with a non-square kernel, stride 2, odd channels; affine=False BN; padded
        # overlapping max-pool; BN1D after a no-bias Linear; Dropout; affine=False BN1D at the end
        "odd_cnn": (nn.Sequential(
            nn.Conv2D(3, 5, (3, 1), stride=(2, 1), padding=(1, 0), bias=False, **kw),
            nn.BatchNorm2D(5, **bn), nn.ReLU(),
            nn.Conv2D(5, 7, 1, **kw), nn.BatchNorm2D(7, affine=False, eps=1e-3, **bn),
            nn.MaxPool2D(3, stride=2, padding=1), nn.Flatten(),
            nn.Linear(7 * 3 * 5, 9, bias=False, **kw), nn.BatchNorm1D(9, momentum=None, **bn), nn.ReLU(),
            nn.Dropout(0.2, rng=0), nn.Linear(9, 3, **kw), nn.BatchNorm1D(3, affine=False, **bn)),
            (3, 11, 9), 0),
        # BN first and BN after a ReLU: nothing to fold into, they stay
        "bn_first": (nn.Sequential(
            nn.BatchNorm2D(3, **bn), nn.Conv2D(3, 4, 3, padding=1, **kw), nn.ReLU(),
            nn.BatchNorm2D(4, **bn), nn.Flatten(), nn.Linear(4 * 5 * 5, 6, **kw),
            nn.BatchNorm1D(6, **bn)),
            (3, 5, 5), 2),
        # BN after Dropout (not adjacent): stays; nested Sequentials are fused inside
        "nested": (nn.Sequential(
            nn.Sequential(nn.Conv2D(2, 3, 2, stride=2, **kw), nn.BatchNorm2D(3, **bn)), nn.ReLU(),
            nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 4, **kw), nn.Dropout(0.5, rng=1),
                          nn.BatchNorm1D(4, **bn))),
            (2, 4, 4), 1),
        # fully connected only, 1x1 images elsewhere: BN1D first, BN1D after Linear
        "mlp": (nn.Sequential(
            nn.BatchNorm1D(13, **bn), nn.Linear(13, 17, bias=False, **kw), nn.BatchNorm1D(17, **bn),
            nn.ReLU(), nn.Linear(17, 2, **kw), nn.BatchNorm1D(2, **bn)),
            (13,), 1),
        "conv_1x1_image": (nn.Sequential(
            nn.Conv2D(6, 3, 1, bias=False, **kw), nn.BatchNorm2D(3, **bn), nn.ReLU(), nn.Flatten()),
            (6, 1, 1), 0),
    }
    out = {}
    for name, (model, shape, left) in cases.items():
        x = rng.standard_normal((batch,) + shape).astype(dtype)
        out[name] = (with_statistics(model, x, rng), x, left)
    return out


def count_bn(model):
    return sum(isinstance(m, (nn.BatchNorm1D, nn.BatchNorm2D)) for _, m in model.named_modules())


def rel_err(a, b):
    """max |a - b| / max |b|: the error relative to the output's scale (outputs near 0 make an
    element-wise relative error meaningless)."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
