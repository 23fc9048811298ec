"""Model builders."""
import numpy as np

from .._validation import as_generator, choice, flag, float_dtype, positive_int, real
from .container import Sequential
from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU

__all__ = ["cnn7", "BN_CHOICES"]

BN_CHOICES = ("none", "all", "last")


def cnn7(bn="none", init="uniform:0.001", dtype=np.float32, seed=0, dropout=0.0, width=32, hidden=256,
         num_classes=10, bn_eps=1e-5, bn_momentum=0.1, input_grad=False, bias=True):
    """The 7-layer CIFAR-10 CNN (input (N, 3, 32, 32)): five 3x3 convolutions (padding 1) and two
    linear layers, max-pooling (2x2, stride 2) between stages. With ``w = width`` (default 32)::

        conv 3->w    @32x32  [BN] ReLU
        conv w->w    @32x32  [BN] ReLU   maxpool -> 16x16
        conv w->2w   @16x16  [BN] ReLU
        conv 2w->2w  @16x16  [BN] ReLU   maxpool -> 8x8
        conv 2w->4w  @8x8    [BN] ReLU   maxpool -> 4x4
        flatten (4w*4*4 = 2048 for w=32)
        linear 4w*16 -> hidden (256)  [BN1D] ReLU  [Dropout(dropout) if dropout > 0]
        linear hidden -> num_classes (10)  [BN1D]        -> logits (softmax in the loss)

    ``bn``: "none" (no BN), "all" (BN after every conv/linear, before the nonlinearity, including
    a BatchNorm1D on the logits; those convs/linears have no bias, BN's beta replaces it),
    "last" (only BatchNorm1D(num_classes) on the logits, right before softmax; the last linear
    then has no bias). ``init``: weight init spec (see ``cybn.nn.init.init_from_spec``), e.g.
    "uniform:0.001" (the small-init experiment), "he", "glorot", "torch". ``seed`` (or a
    Generator) makes weights and dropout masks reproducible (the weights do not depend on
    ``dropout``). ``bn_eps`` / ``bn_momentum`` go to every BN layer. ``bias=False`` drops every conv/linear bias
    (the experiment's bias-free (c): with a tiny BN epsilon, BN's huge backward gain reaches the
    biases below it unnormalised, unlike the weights, whose gradient scale invariance bounds). ``input_grad``: see
    ``Sequential`` (False: the first conv skips its input gradient). Layer indices and parameter names
    match the equivalent ``torch.nn.Sequential`` (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten,
    Linear, BatchNorm1d, Dropout), so its ``state_dict`` (converted to numpy) loads directly.
    """
    bn = choice(bn, "bn", BN_CHOICES)
    dtype = float_dtype(dtype)
    bias = flag(bias, "bias")
    dropout = real(dropout, "dropout", 0.0, 1.0, exclusive_maximum=True)
    width, hidden, num_classes = (positive_int(v, name) for v, name in
                                  ((width, "width"), (hidden, "hidden"), (num_classes, "num_classes")))
    rng = as_generator(seed, "seed")
    bn_kw = dict(eps=bn_eps, momentum=bn_momentum, dtype=dtype)
    use_bn = bn == "all"
    layers = []

    def conv(cin, cout):
        layers.append(Conv2D(cin, cout, 3, stride=1, padding=1, bias=bias and not use_bn, dtype=dtype,
                             rng=rng, init=init))
        if use_bn:
            layers.append(BatchNorm2D(cout, **bn_kw))
        layers.append(ReLU())

    w = width
    conv(3, w)
    conv(w, w)
    layers.append(MaxPool2D(2))
    conv(w, 2 * w)
    conv(2 * w, 2 * w)
    layers.append(MaxPool2D(2))
    conv(2 * w, 4 * w)
    layers.append(MaxPool2D(2))
    layers.append(Flatten())
    layers.append(Linear(4 * w * 4 * 4, hidden, bias=bias and not use_bn, dtype=dtype, rng=rng, init=init))
    if use_bn:
        layers.append(BatchNorm1D(hidden, **bn_kw))
    layers.append(ReLU())
    dropout_at = len(layers)
    bn_last = bn in ("all", "last")
    layers.append(Linear(hidden, num_classes, bias=bias and not bn_last, dtype=dtype, rng=rng, init=init))
    if bn_last:
        layers.append(BatchNorm1D(num_classes, **bn_kw))
    if dropout > 0:
        # seeded after every weight is drawn, so the weights do not depend on ``dropout``
        layers.insert(dropout_at, Dropout(dropout, rng=int(rng.integers(2**63))))
    return Sequential(*layers, input_grad=input_grad)
