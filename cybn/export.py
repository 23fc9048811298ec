"""Hand a trained cybn model to another runtime: an ONNX graph, or its parameters under PyTorch's
keys (an ``.npz`` that the matching ``torch.nn.Sequential`` loads).

Both describe the model's **eval-mode** computation (BatchNorm with its running statistics,
Dropout as the identity) whatever mode it is in. Fold BN first (``cybn.nn.fuse_batchnorm``) for
a graph without BatchNormalization nodes. ``onnx`` and ``torch`` are optional and imported only
when needed.
"""
import numpy as np

from .checkpoint import write_atomically
from .nn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from .nn.module import Module

__all__ = ["ONNX_OPSET", "to_onnx", "to_state_dict_file", "to_torch"]

# The opset the graph is written in. 17 is read by every ONNX Runtime since 1.12 and by the
# onnx checker; each op used (Conv, Relu, MaxPool, Flatten, Gemm, BatchNormalization) has the
# same inference semantics in every opset from 14 up.
ONNX_OPSET = 17
_MIN_OPSET = 14

_EXPORTABLE = (Conv2D, Linear, BatchNorm1D, BatchNorm2D, ReLU, MaxPool2D, Flatten, Dropout)


def _leaves(model):
    """(state-dict prefix, layer) of every leaf layer in order; nested Sequentials are walked.
    A layer type the exporters do not know is refused with a ValueError naming it."""
    if not isinstance(model, Module) or not hasattr(model, "layers"):
        raise TypeError(f"export expects a cybn.nn.Sequential, got {type(model).__name__}")
    out = []
    for prefix, m in model.named_modules():
        if hasattr(m, "layers"):  # a (nested) Sequential: its layers follow
            continue
        if type(m) not in _EXPORTABLE:
            known = ", ".join(t.__name__ for t in _EXPORTABLE)
            raise ValueError(f"cannot export layer {prefix.rstrip('.') or '0'} ({m!r}): "
                             f"{type(m).__name__} is not one of the exportable layers ({known})")
        out.append((prefix, m))
    return out


# ------------------------------------------------------------------------------------- ONNX
def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install "cybn[onnx]"') from None
    return onnx


def _sample_shape(leaves, input_shape):
    """The input's dims after the batch axis: ``input_shape`` checked, or from the first layer
    (channels known, spatial dims symbolic)."""
    first = leaves[0][1] if leaves else None
    if input_shape is None:
        if isinstance(first, (Conv2D, BatchNorm2D)):
            c = first.in_channels if isinstance(first, Conv2D) else first.num_features
            return [c, "H", "W"]
        if isinstance(first, Linear):
            return [first.in_features]
        if isinstance(first, BatchNorm1D):
            return [first.num_features]
        raise ValueError(f"input_shape is needed: the first layer ({first!r}) does not fix the "
                         "input's shape; pass one sample's shape, e.g. (3, 32, 32)")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1
                        for v in shape):
        raise ValueError(f"input_shape must be one sample's shape without the batch axis, a tuple of "
                         f"positive ints such as (3, 32, 32), got {input_shape!r}")
    want = 3 if isinstance(first, (Conv2D, BatchNorm2D, MaxPool2D)) else \
        1 if isinstance(first, (Linear, BatchNorm1D)) else None
    if want is not None and len(shape) != want:
        raise ValueError(f"input_shape {tuple(shape)} must be one sample's shape without the batch "
                         f"axis ({want} dims for a first layer {first!r})")
    return [int(v) for v in shape]


def _onnx_nodes(leaves, onnx, elem):
    """(nodes, initializers) computing the eval-mode model from "input" to "output"."""
    from onnx import helper, numpy_helper
    nodes, inits = [], []
    kept = [(p, m) for p, m in leaves if not isinstance(m, Dropout)]  # eval Dropout: identity
    x = "input"
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)

    def init(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name

    for i, (prefix, m) in enumerate(kept):
        name = prefix.rstrip(".") or "0"
        y = "output" if i == len(kept) - 1 else f"{name}_{type(m).__name__}"
        params = [init(prefix + k, v) for k, v in m.params.items()]  # weight then bias
        if isinstance(m, Conv2D):
            ph, pw = m.padding
            nodes.append(helper.make_node("Conv", [x] + params, [y], name=f"{name}.Conv",
                                          kernel_shape=list(m.kernel_size), strides=list(m.stride),
                                          pads=[ph, pw, ph, pw]))
        elif isinstance(m, Linear):
            nodes.append(helper.make_node("Gemm", [x] + params, [y], name=f"{name}.Gemm", transB=1))
        elif isinstance(m, (BatchNorm1D, BatchNorm2D)):
            if not m.affine:  # gamma = 1, beta = 0
                params = [init(prefix + "unit_scale", np.ones(m.num_features)),
                          init(prefix + "zero_shift", np.zeros(m.num_features))]
            stats = [init(prefix + k, m.buffers[k]) for k in ("running_mean", "running_var")]
            nodes.append(helper.make_node("BatchNormalization", [x] + params + stats, [y],
                                          name=f"{name}.BatchNormalization", epsilon=m.eps))
        elif isinstance(m, ReLU):
            nodes.append(helper.make_node("Relu", [x], [y], name=f"{name}.Relu"))
        elif isinstance(m, MaxPool2D):
            ph, pw = m.padding
            nodes.append(helper.make_node("MaxPool", [x], [y], name=f"{name}.MaxPool",
                                          kernel_shape=list(m.kernel_size), strides=list(m.stride),
                                          pads=[ph, pw, ph, pw]))
        else:  # Flatten: (N, ...) -> (N, prod(...)), C order as ours
            nodes.append(helper.make_node("Flatten", [x], [y], name=f"{name}.Flatten", axis=1))
        x = y
    if not kept:  # an empty (or Dropout-only) model is the identity
        nodes.append(helper.make_node("Identity", [x], ["output"], name="Identity"))
    return nodes, inits


def to_onnx(model, path, input_shape=None, opset=ONNX_OPSET, metadata=None):
    """Write ``model`` (a ``Sequential`` of Conv2D, Linear, BatchNorm1D/2D, ReLU, MaxPool2D,
    Flatten and Dropout, nested Sequentials allowed) as an ONNX file at ``path``.

    The graph computes the eval-mode model: input "input" (N, ...) with a symbolic batch N,
    output "output". ``input_shape``: one sample's shape without the batch axis, e.g.
    (3, 32, 32); by default it comes from the first layer, with symbolic spatial dims.
    ``opset``: the ONNX opset (default ``ONNX_OPSET``). A float64 model gives a DOUBLE graph
    (valid ONNX, but ONNX Runtime's CPU provider has no double Conv). ``metadata``: a dict of
    strings stored as the model's metadata_props (e.g. the input normalisation a consumer must
    apply). The model is checked by
    ``onnx.checker`` (with shape inference) before it is written. Returns the ``onnx.ModelProto``.
    """
    leaves = _leaves(model)
    onnx = _import_onnx()
    from onnx import TensorProto, helper
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if not _MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset must be between {_MIN_OPSET} and {latest} (this onnx {onnx.__version__}), "
                         f"got {opset}")
    dtype = np.dtype(model.dtype or np.float32)
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    dims = _sample_shape(leaves, input_shape)
    if all(isinstance(d, int) for d in dims):
        out_dims = list(model.output_shape(tuple([1] + dims))[1:])
    else:  # only the rank is known (Flatten makes it 2); the checker's shape inference checks the rest
        rank = 2 if any(isinstance(m, Flatten) for _, m in leaves) else len(dims) + 1
        out_dims = [None] * (rank - 1)
    nodes, inits = _onnx_nodes(leaves, onnx, elem)
    graph = helper.make_graph(
        nodes, "cybn", [helper.make_tensor_value_info("input", elem, ["N"] + dims)],
        [helper.make_tensor_value_info("output", elem, ["N"] + out_dims)],
        initializer=inits)
    opsets = [helper.make_opsetid("", int(opset))]
    from . import __version__
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cybn",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    if metadata:
        helper.set_model_props(proto, {str(k): str(v) for k, v in dict(metadata).items()})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        shape = f"input_shape {tuple(dims)}" if input_shape is not None else "the model"
        raise ValueError(f"the ONNX graph of {shape} is inconsistent (do the layer sizes fit "
                         f"the input?): {str(e).splitlines()[0]}") from None
    write_atomically(path, lambda f: f.write(proto.SerializeToString()))
    return proto


# -------------------------------------------------------------------------- PyTorch state dict
def to_state_dict_file(model, path):
    """Write the parameters and buffers of ``model`` under PyTorch's keys ("0.weight",
    "1.running_var", ...) to an uncompressed ``.npz`` at ``path``: the matching
    ``torch.nn.Sequential`` (see ``to_torch``) loads it strictly with ``load_state_dict`` after
    ``{k: torch.from_numpy(v) for k, v in numpy.load(path).items()}``, so the file holds those
    tensors only (no format-version entry; ``Sequential.load`` reads it too). Returns the keys."""
    _leaves(model)  # every layer must have a torch twin
    state = model.state_dict()
    write_atomically(path, lambda f: np.savez(f, **state))
    return list(state)


def to_torch(model):
    """The equivalent ``torch.nn.Sequential`` (eval mode, the same dtype) holding ``model``'s
    parameters; layer indices and keys match, nested Sequentials included. Needs torch."""
    _leaves(model)
    try:
        import torch
    except ImportError:
        raise ImportError("to_torch needs PyTorch (pip install torch)") from None
    nn = torch.nn

    def build(seq):
        layers = []
        for m in seq.layers:
            if hasattr(m, "layers"):
                layers.append(build(m))
            elif isinstance(m, Conv2D):
                layers.append(nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                        m.padding, bias="bias" in m.params))
            elif isinstance(m, Linear):
                layers.append(nn.Linear(m.in_features, m.out_features, bias="bias" in m.params))
            elif isinstance(m, (BatchNorm1D, BatchNorm2D)):
                cls = nn.BatchNorm2d if isinstance(m, BatchNorm2D) else nn.BatchNorm1d
                layers.append(cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine))
            elif isinstance(m, ReLU):
                layers.append(nn.ReLU())
            elif isinstance(m, MaxPool2D):
                layers.append(nn.MaxPool2d(m.kernel_size, m.stride, m.padding))
            elif isinstance(m, Flatten):
                layers.append(nn.Flatten())
            else:
                layers.append(nn.Dropout(m.p))
        return nn.Sequential(*layers)

    net = build(model).to(torch.float64 if model.dtype == np.float64 else torch.float32)
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.state_dict().items()})
    return net.eval()
