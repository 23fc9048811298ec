"""Optimizers (SGD, Adam, AdamW) with PyTorch's exact update rules, and learning-rate schedules that
are pure functions of the step.

``SGD.step()`` per parameter p with gradient g (in place, one fused pass per parameter:
``cybn.functional.sgd_update``):

    d = g + weight_decay * p                      (if weight_decay != 0 and p is decayed)
    b = d                  on the first step      (if momentum != 0)
    b = momentum * b + (1 - dampening) * d        afterwards
    d = d + momentum * b   if nesterov else  d = b
    p = p - lr * d

Schedules answer ``lr_at(step)`` (step = 0-based index of the update about to be made), so a run
resumed at step k gets exactly the learning rates of an uninterrupted run; the trainer sets
``opt.lr = schedule.lr_at(step)`` before each ``opt.step()``.
"""
import math
from collections.abc import Mapping

import numpy as np

from .. import functional as F
from .._validation import flag, from_text, nonnegative_float, nonnegative_int, positive_int, real

__all__ = ["SGD", "Adam", "AdamW", "LRSchedule", "ConstantLR", "StepLR", "CosineLR", "WarmupLR", "schedule_from_spec",
           "SCHEDULE_FORMS"]


class _Optimizer:
    """What every optimizer shares: the parameter list, ``zero_grad`` and per-parameter work arrays.

    ``params``: a model (anything with ``named_parameters()``) or an iterable of
    ``(name, param, grad)`` or ``(name, param, grad, layer)`` tuples. Params and grads are used by
    reference and must be updated in place by their owners (cybn layers do).
    ``decay_bn_and_bias=False`` exempts from weight decay every param called ``bias`` and those a
    layer lists in its ``no_weight_decay`` (BatchNorm's weight and bias; see ``cybn.nn.module``).
    """

    def _collect(self, params, decay_bn_and_bias):
        if hasattr(params, "named_parameters"):
            params = params.named_parameters()
        self.decay_bn_and_bias = flag(decay_bn_and_bias, "decay_bn_and_bias")
        self._params = []  # (name, p, g, decay?)
        seen = set()
        for item in params:
            if len(item) == 4:
                name, p, g, layer = item
            elif len(item) == 3:
                (name, p, g), layer = item, None
            else:
                raise ValueError("params must yield (name, param, grad) or (name, param, grad, layer) tuples")
            if name in seen:
                raise ValueError(f"duplicate parameter name {name!r}")
            seen.add(name)
            if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)):
                raise TypeError(f"parameter {name!r}: param and grad must be numpy arrays")
            if p.shape != g.shape or p.dtype != g.dtype:
                raise ValueError(f"parameter {name!r}: grad {g.shape} {g.dtype} does not match "
                                 f"param {p.shape} {p.dtype}")
            local = name.rsplit(".", 1)[-1]
            decay = self.decay_bn_and_bias or not (
                local == "bias" or local in getattr(layer, "no_weight_decay", ()))
            self._params.append((name, p, g, decay))
        if not self._params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        self._scratch = {}  # name -> work array (no allocation after the first step)

    @property
    def param_names(self):
        return [name for name, _, _, _ in self._params]

    def zero_grad(self):
        for _, _, g, _ in self._params:
            g.fill(0)

    def _work(self, key, p):
        w = self._scratch.get(key)
        if w is None:
            w = self._scratch[key] = np.empty_like(p)
        return w


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum / Nesterov / weight decay (``torch.optim.SGD`` semantics).

    ``params`` and ``decay_bn_and_bias``: see ``_Optimizer``.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 decay_bn_and_bias=True):
        self.lr = nonnegative_float(lr, "lr")
        self.momentum = nonnegative_float(momentum, "momentum")
        self.weight_decay = nonnegative_float(weight_decay, "weight_decay")
        self.dampening = nonnegative_float(dampening, "dampening")
        self.nesterov = flag(nesterov, "nesterov")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self._collect(params, decay_bn_and_bias)
        self._buffers = {}  # name -> momentum buffer (created at the first step, like PyTorch)

    def step(self):
        for name, p, g, decay in self._params:
            buf, first = None, False
            if self.momentum != 0:
                buf = self._buffers.get(name)
                if buf is None:  # created at the first step, like PyTorch's
                    buf = self._buffers[name] = np.empty_like(p)
                    first = True
            F.sgd_update(p, g, buf, self.lr, self.momentum, self.weight_decay if decay else 0.0,
                         self.dampening, self.nesterov, first)

    def state_dict(self):
        """Momentum buffers (copies), keyed by parameter name (absent before the first step)."""
        return {name: buf.copy() for name, buf in self._buffers.items()}

    def load_state_dict(self, state):
        """Restore momentum buffers: none (before the first step) or one per parameter.

        Like ``Module.load_state_dict``: unexpected or missing names are a ValueError listing
        them, a shape mismatch a ValueError and a dtype mismatch a TypeError; nothing changes
        unless every check passes.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"optimizer state must be a mapping (from SGD.state_dict()) of parameter name "
                            f"-> momentum buffer, got {type(state).__name__}")
        by_name = {name: p for name, p, _, _ in self._params}
        unexpected = [k for k in state if k not in by_name]
        missing = [k for k in by_name if k not in state] if state else []
        if unexpected or missing:
            parts = []
            if missing:
                parts.append(f"missing momentum buffer(s) {missing}")
            if unexpected:
                parts.append(f"buffer(s) for unknown parameter(s) {unexpected}")
            raise ValueError("error loading SGD state: " + "; ".join(parts))
        new = {}
        for name, value in state.items():
            try:
                value = np.asarray(value)
            except (TypeError, ValueError) as e:
                raise TypeError(f"momentum buffer {name!r} is not an array ({type(value).__name__}): {e}") from None
            p = by_name[name]
            if value.shape != p.shape:
                raise ValueError(f"momentum buffer {name!r} has shape {value.shape}, parameter has {p.shape}")
            if value.dtype != p.dtype:
                raise TypeError(f"momentum buffer {name!r} has dtype {value.dtype}, parameter has {p.dtype}")
            new[name] = np.array(value, copy=True)
        self._buffers = new

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}, decay_bn_and_bias={self.decay_bn_and_bias})")


def check_betas(betas):
    """Adam's (beta1, beta2), each a real number in [0, 1); TypeError/ValueError name the entry."""
    if not isinstance(betas, (tuple, list)):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {type(betas).__name__}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values")
    return tuple(real(b, f"betas[{i}]", 0.0, 1.0, exclusive_maximum=True) for i, b in enumerate(betas))


class Adam(_Optimizer):
    """Adam (``torch.optim.Adam`` semantics, its single-tensor path), optionally AMSGrad.

    Per parameter p with gradient g at step t = 1, 2, ... (in place, into preallocated buffers):

        d = g + weight_decay * p            (if weight_decay != 0 and p is decayed; AdamW instead
                                             multiplies p by 1 - lr * weight_decay first, d = g)
        m = lerp(m, d, 1 - beta1)           v = beta2 * v + (1 - beta2) * d * d
        v_max = max(v_max, v)               (amsgrad; the denominator then uses v_max)
        p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``params`` and ``decay_bn_and_bias``: see ``_Optimizer``. The moments start at zero, as in PyTorch.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decay_bn_and_bias=True):
        self.lr = nonnegative_float(lr, "lr")
        self.betas = check_betas(betas)
        self.eps = nonnegative_float(eps, "eps")
        self.weight_decay = nonnegative_float(weight_decay, "weight_decay")
        self.amsgrad = flag(amsgrad, "amsgrad")
        self._collect(params, decay_bn_and_bias)
        self.step_count = 0
        self._moments = {key: {name: np.zeros_like(p) for name, p, _, _ in self._params}
                         for key in self._moment_keys()}

    def _moment_keys(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def step(self):
        self.step_count += 1
        lr, wd, eps = self.lr, self.weight_decay, self.eps
        beta1, beta2 = self.betas
        step_size = lr / (1 - beta1 ** self.step_count)
        bias_correction2_sqrt = (1 - beta2 ** self.step_count) ** 0.5
        weight = 1 - beta1
        for name, p, g, decay in self._params:
            m, v = self._moments["exp_avg"][name], self._moments["exp_avg_sq"][name]
            tmp, work = self._work(name, p), self._work(name + "#work2", p)
            d = g
            if wd != 0 and decay:
                if self._decoupled:
                    p *= 1 - lr * wd
                else:
                    np.multiply(p, wd, out=tmp)
                    np.add(g, tmp, out=tmp)
                    d = tmp
            # m.lerp_(d, weight), both of torch's branches (exact at weight 1)
            np.subtract(d, m, out=work)
            if abs(weight) < 0.5:
                work *= weight
                m += work
            else:
                work *= 1 - weight
                np.subtract(d, work, out=m)
            v *= beta2
            np.multiply(d, 1 - beta2, out=work)
            work *= d
            v += work
            if self.amsgrad:
                v_max = self._moments["max_exp_avg_sq"][name]
                np.maximum(v_max, v, out=v_max)
                v = v_max  # the denominator uses the running maximum
            np.sqrt(v, out=work)
            work /= bias_correction2_sqrt
            work += eps
            np.multiply(m, -step_size, out=tmp)
            tmp /= work
            p += tmp

    def state_dict(self):
        """``step`` (an int64 scalar) and copies of the moments as ``<moment>/<parameter name>``."""
        state = {"step": np.array(self.step_count, dtype=np.int64)}
        for key, bufs in self._moments.items():
            state.update({f"{key}/{name}": buf.copy() for name, buf in bufs.items()})
        return state

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned. Like ``Module.load_state_dict``: unexpected or
        missing entries are a ValueError listing them, a shape mismatch a ValueError and a dtype
        mismatch a TypeError; nothing changes unless every check passes."""
        who = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"optimizer state must be a mapping (from {who}.state_dict()), got {type(state).__name__}")
        expected = self.state_dict().keys()
        unexpected = sorted(k for k in state if k not in expected)
        missing = sorted(k for k in expected if k not in state)
        if unexpected or missing:
            parts = [f"missing {missing}" + (" (saved with amsgrad=False?)" if any("max_" in k for k in missing) else "")
                     ] if missing else []
            parts += [f"unexpected {unexpected}"] if unexpected else []
            raise ValueError(f"error loading {who} state: " + "; ".join(parts))
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or step < 0:
            raise ValueError(f"optimizer state 'step' must be an integer scalar >= 0, got {step!r}")
        by_name = {name: p for name, p, _, _ in self._params}
        for k in expected:
            if k == "step":
                continue
            value, p = np.asarray(state[k]), by_name[k.split("/", 1)[1]]
            if value.shape != p.shape:
                raise ValueError(f"optimizer state {k!r} has shape {value.shape}, parameter has {p.shape}")
            if value.dtype != p.dtype:
                raise TypeError(f"optimizer state {k!r} has dtype {value.dtype}, parameter has {p.dtype}")
        self.step_count = int(step)
        for key, bufs in self._moments.items():
            for name, buf in bufs.items():
                np.copyto(buf, state[f"{key}/{name}"])

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, amsgrad={self.amsgrad}, "
                f"decay_bn_and_bias={self.decay_bn_and_bias})")


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): p *= 1 - lr * weight_decay before
    the Adam update, and the gradient is not decayed. Default weight_decay 1e-2, as in PyTorch."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 decay_bn_and_bias=True):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decay_bn_and_bias)

# ---- learning-rate schedules ----------------------------------------------------------------------

def _step(step):
    return nonnegative_int(step, "step")


class LRSchedule:
    """Base of the schedules: ``lr_at(step)`` is a pure function of the 0-based step."""

    def lr_at(self, step):
        raise NotImplementedError

    def __call__(self, step):
        return self.lr_at(step)


class ConstantLR(LRSchedule):
    def __init__(self, lr):
        self.lr = nonnegative_float(lr, "lr")

    def lr_at(self, step):
        _step(step)
        return self.lr

    def __repr__(self):
        return f"ConstantLR(lr={self.lr})"


class StepLR(LRSchedule):
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = nonnegative_float(lr, "lr")
        self.step_size = positive_int(step_size, "step_size")
        self.gamma = nonnegative_float(gamma, "gamma")

    def lr_at(self, step):
        return self.lr * self.gamma ** (_step(step) // self.step_size)

    def __repr__(self):
        return f"StepLR(lr={self.lr}, step_size={self.step_size}, gamma={self.gamma})"


class CosineLR(LRSchedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2; min_lr after total_steps."""

    def __init__(self, lr, total_steps, min_lr=0.0):
        self.lr = nonnegative_float(lr, "lr")
        self.total_steps = positive_int(total_steps, "total_steps")
        self.min_lr = nonnegative_float(min_lr, "min_lr")

    def lr_at(self, step):
        t = min(_step(step), self.total_steps) / self.total_steps
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __repr__(self):
        return f"CosineLR(lr={self.lr}, total_steps={self.total_steps}, min_lr={self.min_lr})"


class WarmupLR(LRSchedule):
    """Linear warm-up over the first ``warmup_steps`` updates: ``schedule.lr_at(step) * (step + 1) /
    warmup_steps`` (the inner schedule is not shifted), then ``schedule.lr_at(step)``."""

    def __init__(self, schedule, warmup_steps):
        self.schedule = schedule
        self.warmup_steps = nonnegative_int(warmup_steps, "warmup_steps")

    @property
    def lr(self):
        return self.schedule.lr

    def lr_at(self, step):
        step = _step(step)
        lr = self.schedule.lr_at(step)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def __repr__(self):
        return f"WarmupLR({self.schedule!r}, warmup_steps={self.warmup_steps})"


SCHEDULE_FORMS = ("constant", "step:STEP_SIZE[:GAMMA] (gamma 0.1)", "cosine[:MIN_LR] (needs total_steps)",
                  "warmup:N+<one of the above>")


def schedule_from_spec(spec, lr, total_steps=None):
    """Build a schedule from a CLI string: "constant", "step:10000:0.1", "cosine", "cosine:1e-4",
    "warmup:500+cosine". Steps count optimizer updates. ValueError names the allowed forms."""
    def bad(why):
        return ValueError(f"bad lr schedule {spec!r} ({why}); allowed forms: " + ", ".join(SCHEDULE_FORMS))

    if not isinstance(spec, str):
        raise TypeError(f"lr schedule must be a string such as 'cosine', got {type(spec).__name__}")
    text = spec.strip().lower()
    warmup_text = None
    if text.startswith("warmup:"):
        head, plus, text = text.partition("+")
        if not plus:
            raise bad("warmup needs a schedule after '+', e.g. warmup:500+cosine")
        warmup_text = head.split(":", 1)[1]
    def number(text, checker, name):
        try:
            return from_text(text, checker, name)
        except ValueError as e:
            raise bad(str(e)) from None

    kind, *args = text.split(":")
    warmup = 0 if warmup_text is None else number(warmup_text, nonnegative_int, "warmup steps")
    if kind == "constant" and not args:
        sched = ConstantLR(lr)
    elif kind == "step" and len(args) in (1, 2):
        gamma = number(args[1], nonnegative_float, "gamma") if len(args) == 2 else 0.1
        sched = StepLR(lr, number(args[0], positive_int, "step size"), gamma)
    elif kind == "cosine" and len(args) <= 1:
        if total_steps is None:
            raise bad("cosine needs total_steps")
        sched = CosineLR(lr, total_steps, number(args[0], nonnegative_float, "min_lr") if args else 0.0)
    else:
        raise bad(f"unknown schedule or wrong number of arguments: {text!r}")
    return WarmupLR(sched, warmup) if warmup else sched
