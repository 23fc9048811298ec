"""``cybn evaluate``, ``cybn predict`` and ``cybn export``: use a saved run (a ``cybn train --out``
folder or its checkpoint.npz). Evaluation and prediction run the BN-folded model
(``cybn.nn.fuse_batchnorm``) on the forward-only path unless ``--no-fuse``."""
import argparse
import json
import math
import os

from .. import _threads, export
from .._validation import positive_int_arg
from ..data import load_cifar10
from ..deploy import DeployError, evaluate, load_run, predict, read_images
from ..nn import fuse_batchnorm
from ..recipe import RunError, add_data_options

PNG_FILE = "confusion_matrix.png"


class _RunCommand:
    """A command on a saved run: the RUN argument, its own options (``add_options``) and
    ``--no-fuse``; ``load(args)`` applies ``--threads`` and loads the run."""
    name = help = description = ""

    def add_parser(self, subparsers):
        p = subparsers.add_parser(self.name, help=self.help, description=self.description)
        p.add_argument("run", metavar="RUN", help="run folder (--out of cybn train) or its checkpoint.npz")
        self.add_options(p)
        p.add_argument("--no-fuse", dest="fuse", action="store_false",
                       help="keep BatchNorm as separate layers (default: fold it into the layer before)")
        return p

    def add_options(self, p):
        raise NotImplementedError

    @staticmethod
    def load(args):
        if getattr(args, "threads", None) is not None:
            _threads.set_num_threads(args.threads)
        return load_run(args.run)

    @staticmethod
    def model(saved, args):
        return fuse_batchnorm(saved.model) if args.fuse else saved.model


def _extra(fn, *args, **kwargs):
    """``fn(...)``, with a missing optional extra (Pillow, onnx) as a one-line DeployError."""
    try:
        return fn(*args, **kwargs)
    except ImportError as e:
        raise DeployError(str(e)) from None


def _dims(value_info):
    """An ONNX input's or output's shape as text: "(N, 3, 32, 32)"."""
    dims = value_info.type.tensor_type.shape.dim
    return "(" + ", ".join(str(d.dim_value or d.dim_param or "?") for d in dims) + ")"


class EvaluateCommand(_RunCommand):
    name = "evaluate"
    help = "test loss, accuracy, per-class accuracy and confusion matrix of a saved run"
    description = ("Evaluate a saved run on the CIFAR-10 test set: loss, accuracy, per-class accuracy and "
                   f"the confusion matrix (a table, and RUN/{PNG_FILE} where matplotlib is installed).")

    def add_options(self, p):
        add_data_options(p)
        p.add_argument("--limit", type=positive_int_arg, default=None, help="only the first N test images")
        p.add_argument("--batch-size", type=positive_int_arg, default=500, help="(default: %(default)s)")
        p.add_argument("--png", metavar="FILE", default=None,
                       help=f"where to write the confusion-matrix PNG (default: {PNG_FILE} in the run folder)")
        p.add_argument("--no-png", action="store_true", help="no PNG")
        p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")

    def run(self, args):
        saved = self.load(args)
        mean, std = saved.normalisation()
        try:
            data = load_cifar10(args.data, limit=(0, args.limit), quiet=args.quiet)
        except ValueError as e:  # damaged archive; OSErrors (missing file, download) speak for themselves
            raise RunError(f"cannot read CIFAR-10 from {args.data}: {e}") from None
        result = evaluate(self.model(saved, args), data.test_images, data.test_labels, mean, std,
                          args.batch_size, classes=saved.classes)
        png = None
        if not args.no_png:
            png = args.png or os.path.join(saved.folder, PNG_FILE)
            try:
                result.save_png(png)
            except ImportError:
                png = None  # matplotlib is optional: the table says it all
        if args.json:
            print(json.dumps({"images": result.count, "loss": result.loss, "accuracy": result.accuracy,
                              "per_class": {c: None if math.isnan(a) else a  # a class without images
                                            for c, a in zip(result.classes, result.per_class.tolist())},
                              "confusion": result.confusion.tolist(), "png": png}, indent=1))
            return 0
        print(f"{saved.checkpoint}: {result.count:,} test images, loss {result.loss:.4f}, "
              f"accuracy {100 * result.accuracy:.2f} %{' (BN folded)' if args.fuse else ''}\n")
        print(result.table())
        if png is not None:
            print(f"\nconfusion matrix: {png}")
        elif not args.no_png:
            print("\n(no PNG: matplotlib is not installed; pip install \"cybn[plot]\")")
        return 0


class PredictCommand(_RunCommand):
    name = "predict"
    help = "classify image files with a saved run"
    description = ("Top-k CIFAR-10 classes for PNG/JPEG images (needs Pillow: pip install \"cybn[image]\"). "
                   "Images of another size are resized to 32x32, and the output says so.")

    def add_options(self, p):
        p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
        p.add_argument("--top", type=positive_int_arg, default=3, help="classes shown per image (default: %(default)s)")
        p.add_argument("--threads", type=positive_int_arg, default=None, help="threads for the kernels")
        p.add_argument("--json", action="store_true", help="print the predictions as JSON")

    def run(self, args):
        saved = self.load(args)
        mean, std = saved.normalisation()
        classes = saved.classes
        images, notes = _extra(read_images, args.images)
        top, probs = predict(self.model(saved, args), images, mean, std, k=min(args.top, len(classes)))
        rows = [{"image": path, "top": [{"class": classes[c], "probability": float(p)} for c, p in zip(t, q)],
                 "note": note} for path, t, q, note in zip(args.images, top, probs, notes)]
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for row in rows:
            best = ", ".join(f"{r['class']} {100 * r['probability']:.1f} %" for r in row["top"])
            print(f"{row['image']}: {best}" + (f"  ({row['note']})" if row["note"] else ""))
        return 0


class ExportCommand(_RunCommand):
    name = "export"
    help = "write a saved run's model as ONNX and/or a PyTorch state dict"
    description = ("Export a saved run's model (eval mode; BN folded unless --no-fuse): an ONNX graph "
                   "(needs onnx: pip install \"cybn[onnx]\") and/or an .npz of the parameters under "
                   "PyTorch's keys, which the matching torch.nn.Sequential loads.")

    def add_options(self, p):
        p.add_argument("--onnx", metavar="FILE", default=None, help="write the ONNX graph here")
        p.add_argument("--state-dict", metavar="FILE", default=None, help="write the state-dict .npz here")
        p.add_argument("--opset", type=positive_int_arg, default=None, help="ONNX opset (default: cybn's pinned one)")

    def run(self, args):
        if args.onnx is None and args.state_dict is None:
            raise argparse.ArgumentError(None, "nothing to export: give --onnx FILE and/or --state-dict FILE")
        saved = self.load(args)
        model = self.model(saved, args)
        what = "BN folded" if args.fuse else "BN as separate layers"
        if args.onnx is not None:
            meta = {"source": saved.checkpoint, "classes": ",".join(saved.classes)}
            if saved.record is not None:
                meta.update(mean=json.dumps(saved.record.mean), std=json.dumps(saved.record.std),
                            normalisation="x = (pixel / 255 - mean) / std per RGB channel, NCHW")
            opset = export.ONNX_OPSET if args.opset is None else args.opset
            shape = tuple(saved.record.input_shape) if saved.record is not None else None
            try:
                proto = _extra(export.to_onnx, model, args.onnx, input_shape=shape, opset=opset, metadata=meta)
            except (TypeError, ValueError) as e:
                raise DeployError(f"--onnx {args.onnx}: {e}") from None
            print(f"wrote {args.onnx}: ONNX opset {opset}, {what}; input 'input' {_dims(proto.graph.input[0])} "
                  f"{model.dtype}, normalised as the run was (mean and std in the model's metadata); "
                  f"output 'output' {_dims(proto.graph.output[0])} logits")
        if args.state_dict is not None:
            keys = export.to_state_dict_file(model, args.state_dict)
            print(f"wrote {args.state_dict}: {len(keys)} tensors under PyTorch's keys, {what} "
                  "(cybn.export.to_torch builds the matching torch.nn.Sequential)")
        return 0


EVALUATE = EvaluateCommand()
PREDICT = PredictCommand()
EXPORT = ExportCommand()
