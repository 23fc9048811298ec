"""The small-init experiment's results as typed records: one definition of every name that
``small_init`` writes and ``report`` reads, serialised to results.json (``_formats.RESULTS``).

The JSON layout is ``dataclasses.asdict`` of ``Results``. Version 2 keeps every seed: ``runs``
maps a configuration to a ``RunGroup`` (its label, part and one ``RunResult`` per seed) and sweep
rows carry their seed. Version 1 files (and unversioned ones, written before versioning: the same
layout) held one ``RunResult`` per key from one seed; they read as groups of that one seed, all
in the ``main`` part, and their test-set steps ratios are dropped. Keys a reader does not know
are ignored and fields a file lacks take their defaults (older files have no ``bias`` in the eps
sweep).
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
    """One full-length training run of one seed: its config, history, loss trace, pre-activation
    scales, and (optimizer part) the first steps' per-layer gradient magnitudes."""
    label: str
    config: dict  # TrainConfig.to_json()
    seed: int = 0
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
    stopped_at_chance_epoch: Optional[int] = None  # the epoch after which it sat at chance and stopped
    # [{"step": s, "loss": l, "layers": {name: {"grad_rms", "grad_max_abs", "weight_rms", "update_rms",
    #   and with Adam "sqrt_v_hat_rms", "eps_dominated", "v_underflow"}}}] (probes.GradientRecorder)
    gradients: list = dataclasses.field(default_factory=list)

    def final(self, key):
        """``key`` of the last logged epoch (None before the first)."""
        return self.history[-1].get(key) if self.history else None

    def best(self, key="test_accuracy"):
        return max((h.get(key) or 0.0 for h in self.history), default=None)

    @classmethod
    def from_json(cls, record):
        r = cls(**_known(cls, record))
        r.preact_at_init = layer_scales(r.preact_at_init)
        r.preactivations = [{"step": p["step"], "layers": layer_scales(p["layers"])} for p in r.preactivations]
        r.losses = [tuple(p) for p in r.losses]
        r.test_points = [tuple(p) for p in r.test_points]
        return r


@dataclasses.dataclass
class RunGroup:
    """One configuration of one part over its seeds; the optional fields say what the part varied."""
    label: str
    part: str = "main"  # small_init.PARTS
    seeds: list = dataclasses.field(default_factory=list)  # [RunResult], in run order
    init: Optional[str] = None  # steps
    multiplier: Optional[float] = None  # steps: x the control's learning rate
    bn: Optional[str] = None  # dropout
    dropout: Optional[float] = None  # dropout
    config_key: Optional[str] = None  # optimizer: which of (a)-(d)
    adam_eps: Optional[float] = None  # optimizer

    @classmethod
    def from_json(cls, record):
        g = cls(**_known(cls, record))
        g.seeds = [RunResult.from_json(r) for r in g.seeds]
        return g


@dataclasses.dataclass
class StepsRatio:
    """Steps a BN run needs to reach the control's best validation accuracy (``ratio``: control / BN)."""
    control_best_accuracy: float
    control_steps: int
    bn_steps: Optional[int]
    ratio: Optional[float]


@dataclasses.dataclass
class StepsRow:
    """One seed's steps ratio for the BN run ``key`` (None figures: nothing was evaluated)."""
    seed: int
    key: str
    init: str
    multiplier: float
    control_best_accuracy: Optional[float] = None
    control_steps: Optional[int] = None
    bn_steps: Optional[int] = None
    ratio: Optional[float] = None


@dataclasses.dataclass
class StepsPart:
    val_size: int
    eval_every: int
    rows: list = dataclasses.field(default_factory=list)  # [StepsRow]


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
    seed: int = 0
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
    seed: int = 0
    error: Optional[str] = None
    seconds: float = 0.0


@dataclasses.dataclass
class LrSweep:
    rows: list  # [LrRow]
    largest_lr_that_trains: dict  # {"all": lr or None, "none": lr or None}: every seed trains there


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
    """Everything the experiment measured; ``runs`` keys name configurations (CONFIGS keys for
    main, ``steps_*``, ``dropout_*``, ``<optimizer>_<eps>_<key>``)."""
    options: dict  # dataclasses.asdict(small_init.Options)
    runs: dict = dataclasses.field(default_factory=dict)  # {key: RunGroup}
    steps: Optional[StepsPart] = None
    eps_sweep: list = dataclasses.field(default_factory=list)  # [EpsRow]
    lr_sweep: Optional[LrSweep] = None
    scale_invariance: list = dataclasses.field(default_factory=list)  # [ScaleRow]
    part_seconds: dict = dataclasses.field(default_factory=dict)  # {part: wall seconds}
    total_seconds: float = 0.0
    machine: str = ""
    quick: bool = False  # run with --quick (the commands in the claims table say so)
    format_version: int = _formats.RESULTS

    def to_json(self):
        return dataclasses.asdict(self)

    def groups(self, part):
        return {k: g for k, g in self.runs.items() if g.part == part}

    @classmethod
    def from_json(cls, record, path="results.json"):
        """Results from ``to_json()``'s dict (or an older file, see the module docstring);
        FormatError for a newer version or a record that is not small-init results."""
        try:
            version = _formats.check_version(record.get(_formats.KEY), _formats.RESULTS, "results", path)
            if version == 1:
                record = _from_version_1(record)
            r = cls(**_known(cls, record))
            r.format_version = _formats.RESULTS
            r.runs = {k: RunGroup.from_json(v) for k, v in r.runs.items()}
            if r.steps:
                r.steps = StepsPart(r.steps["val_size"], r.steps["eval_every"],
                                    [StepsRow(**_known(StepsRow, v)) for v in r.steps["rows"]])
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


def _from_version_1(record):
    """A version-1 record in version 2's layout: each run a group of its one seed."""
    options = dict(record["options"])
    seed = options.pop("seed", 0)
    options["seeds"] = [seed]
    runs = {k: {"label": v["label"], "part": "main", "seeds": [{**v, "seed": seed}]}
            for k, v in record.get("runs", {}).items()}
    return {**record, "options": options, "runs": runs}


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
