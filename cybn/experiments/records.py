"""The small-init experiment's results as typed records: one definition of every name that
``small_init`` writes and ``report`` reads, serialised to results.json (``_formats.RESULTS``).

The JSON layout is ``dataclasses.asdict`` of ``Results``; results.json files written before
versioning have the same layout and read as version 1. Keys a reader does not know are ignored
and fields a file lacks take their defaults (older files have no ``bias`` in the eps sweep).
"""
import dataclasses
import json
from typing import Optional

from .. import _formats

NAN = float("nan")


def _known(cls, record):
    """``record``'s entries that are fields of ``cls`` (see the module docstring)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in record.items() if k in names}


@dataclasses.dataclass
class LayerScale:
    """A layer output's std, mean |x| and mean per-channel batch variance (what BN divides by)."""
    std: float
    mean_abs: float = NAN
    channel_var: float = NAN


def layer_scales(record):
    """{layer name: LayerScale} from its JSON object."""
    return {name: LayerScale(**_known(LayerScale, v)) for name, v in record.items()}


def last_preactivation(scales):
    """The network's last pre-activation (before any BN: names without ``+bn``), e.g. cnn7's fc2,
    as (name, LayerScale); (None, None) if nothing was recorded."""
    names = [n for n in scales if not n.endswith("+bn")]
    return (names[-1], scales[names[-1]]) if names else (None, None)


@dataclasses.dataclass
class RunResult:
    """One full-length training run: its config, history, loss trace, pre-activation scales."""
    label: str
    config: dict  # TrainConfig.to_json()
    error: Optional[str] = None
    history: list = dataclasses.field(default_factory=list)  # the Trainer's per-epoch dicts
    losses: list = dataclasses.field(default_factory=list)  # [(step, loss)]
    preactivations: list = dataclasses.field(default_factory=list)  # [{"step": s, "layers": {name: LayerScale}}]
    preact_at_init: dict = dataclasses.field(default_factory=dict)  # {name: LayerScale} at step 0
    test_points: list = dataclasses.field(default_factory=list)  # [(step, test_accuracy, test_loss)]
    seconds: float = 0.0
    eval_seconds: float = 0.0
    images_per_s: Optional[float] = None
    outcome: str = ""

    @classmethod
    def from_json(cls, record):
        r = cls(**_known(cls, record))
        r.preact_at_init = layer_scales(r.preact_at_init)
        r.preactivations = [{"step": p["step"], "layers": layer_scales(p["layers"])} for p in r.preactivations]
        r.losses = [tuple(p) for p in r.losses]
        r.test_points = [tuple(p) for p in r.test_points]
        return r


@dataclasses.dataclass
class StepsRatio:
    """Steps a BN run needs to reach the control's best test accuracy (``ratio``: control / BN)."""
    control_best_accuracy: float
    control_steps: int
    bn_steps: Optional[int]
    ratio: Optional[float]


@dataclasses.dataclass
class EpsRow:
    lr: float
    eps: float
    last_layer_var_at_init: float
    bn_gain_at_init: float
    xhat_scale_at_init: float
    final_loss: Optional[float]
    outcome: str
    bias: bool = True
    error: Optional[str] = None
    steps: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class LrRow:
    bn: str
    lr: float
    multiplier: float
    outcome: str
    final_loss: Optional[float]
    test_accuracy: Optional[float]
    error: Optional[str] = None
    seconds: float = 0.0


@dataclasses.dataclass
class LrSweep:
    rows: list  # [LrRow]
    largest_lr_that_trains: dict  # {"all": lr or None, "none": lr or None}


@dataclasses.dataclass
class ScaleRow:
    init: str
    k: float
    conv_output_var: float
    bn_eps: float
    output_rel_change: float
    loss_change: float
    grad_ratio: float
    grad_rel_error: float


@dataclasses.dataclass
class Results:
    """Everything the experiment measured; ``runs`` keys are CONFIGS keys plus b_fast, d_dropout."""
    options: dict
    runs: dict = dataclasses.field(default_factory=dict)  # {key: RunResult}
    steps_to_control_best: dict = dataclasses.field(default_factory=dict)  # {run key: StepsRatio or None}
    eps_sweep: list = dataclasses.field(default_factory=list)  # [EpsRow]
    lr_sweep: Optional[LrSweep] = None
    scale_invariance: list = dataclasses.field(default_factory=list)  # [ScaleRow]
    total_seconds: float = 0.0
    machine: str = ""
    format_version: int = _formats.RESULTS

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record, path="results.json"):
        """Results from ``to_json()``'s dict (or an unversioned older file); FormatError for a
        newer version or a record that is not small-init results."""
        try:
            _formats.check_version(record.get(_formats.KEY), _formats.RESULTS, "results", path)
            r = cls(**_known(cls, record))
            r.format_version = _formats.RESULTS
            r.runs = {k: RunResult.from_json(v) for k, v in r.runs.items()}
            r.steps_to_control_best = {k: StepsRatio(**v) if v else None
                                       for k, v in (r.steps_to_control_best or {}).items()}
            r.eps_sweep = [EpsRow(**_known(EpsRow, v)) for v in r.eps_sweep or []]
            if r.lr_sweep:
                r.lr_sweep = LrSweep([LrRow(**_known(LrRow, v)) for v in r.lr_sweep["rows"]],
                                     r.lr_sweep["largest_lr_that_trains"])
            r.scale_invariance = [ScaleRow(**_known(ScaleRow, v)) for v in r.scale_invariance or []]
        except _formats.FormatError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise _formats.FormatError(f"{path} is not a small-init results file: {e!r}") from None
        return r


def write_results(results, path):
    with open(path, "w") as f:
        json.dump(results.to_json(), f, indent=1, default=float)


def read_results(path):
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError as e:
        raise _formats.FormatError(f"{path} is not JSON: {e}") from None
    return Results.from_json(record, path)
