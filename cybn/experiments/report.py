"""Write an experiment's results: results.json (every figure), report.md (tables) and PNG plots.

Plots need matplotlib (``pip install "cybn[plot]"``); without it the report says so and the
tables are still written.
"""
import math
import os

import numpy as np

from .claims import claims_table, dropout_gap
from .records import last_preactivation, write_results
from .seeds import band, fmt, pct, summary, tally
from .small_init import best_point

CHANCE = math.log(10.0)


def _fmt(v, spec=".3g"):
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean(values):
    s = summary(values)
    return s["mean"] if s else None


def _last_layer(preact):
    """The std of the network's last pre-activation (before any BN, e.g. cnn7's fc2)."""
    return last_preactivation(preact)[1].std if preact else None


def _stopped(group):
    epochs = [r.stopped_at_chance_epoch for r in group.seeds if r.stopped_at_chance_epoch]
    return f"{len(epochs)}/{len(group.seeds)} seeds, after epoch {fmt(epochs, 'g')}" if epochs else "—"


def run_table(groups, extra_headers=(), extra=lambda g: ()):
    """One row per configuration: figures over its seeds."""
    rows = []
    for g in groups.values():
        recs = g.seeds
        rows.append([g.label, _fmt(recs[0].config["lr"], "g"), tally(r.outcome for r in recs),
                     fmt([r.final("train_loss") for r in recs], ".4f"), pct([r.final("train_accuracy") for r in recs]),
                     pct([r.final("test_accuracy") for r in recs]), pct([r.best() for r in recs]), *extra(g),
                     fmt([r.seconds for r in recs], ".0f", unit=" s"), fmt([r.images_per_s for r in recs], ".0f"),
                     _stopped(g)])
    return _table(["configuration", "peak lr", "outcome", "final train loss", "train acc (running)", "test acc",
                   "best test acc", *extra_headers, "wall time per seed", "images/s", "stopped at chance"], rows)


def main_table(groups):
    return run_table(groups, ["last-layer pre-activation std at init"],
                     lambda g: [fmt([_last_layer(r.preact_at_init) for r in g.seeds], ".2e")])


def preact_table(groups):
    names = []
    for g in groups.values():
        for r in g.seeds:
            names += [n for n in r.preact_at_init if n not in names]
    rows = [[g.label] + [_fmt(_mean([r.preact_at_init[n].std for r in g.seeds if n in r.preact_at_init]), ".1e")
                         for n in names] for g in groups.values()]
    return _table(["std at init (mean over seeds)"] + names, rows)


def steps_table(results):
    steps, runs = results.steps, results.runs
    control = runs.get("steps_control")
    lines = []
    if control:
        best = [best_point(r.test_points) for r in control.seeds if r.test_points]
        lines += [f"The control, {control.label}, reached its best validation accuracy, {pct([b[1] for b in best])}, "
                  f"at step {fmt([b[0] for b in best], '.4g')} (validation: the last {steps.val_size} training "
                  f"images, evaluated every {steps.eval_every} steps).", ""]
    rows = []
    for key in dict.fromkeys(r.key for r in steps.rows):
        mine = [r for r in steps.rows if r.key == key]
        missed = sum(r.ratio is None for r in mine)
        rows.append([runs[key].label, _fmt(runs[key].seeds[0].config["lr"], "g"), fmt([r.bn_steps for r in mine], ".4g"),
                     fmt([r.ratio for r in mine], ".2f", unit="×")
                     + (f" (not reached: {missed}/{len(mine)} seeds)" if missed else ""),
                     tally(rec.outcome for rec in runs[key].seeds)])
    return "\n".join(lines + [_table(["BN run", "peak lr", "step it reached the control's best",
                                       "control steps / BN steps", "outcome"], rows)])


def _grouped(rows, keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    return groups


def eps_table(rows):
    out = []
    for (bias, lr, eps), g in _grouped(rows, ("bias", "lr", "eps")).items():
        out.append(["yes" if bias else "no", _fmt(lr, "g"), _fmt(eps, ".0e"),
                    fmt([r.last_layer_var_at_init for r in g], ".2e"), fmt([r.xhat_scale_at_init for r in g], ".2e"),
                    fmt([r.bn_gain_at_init for r in g], ".2e"), tally(r.outcome for r in g),
                    fmt([r.final_loss for r in g], ".4f")])
    return _table(["biases", "lr", "ε", "last-layer batch variance at init", "std of x̂ = √(σ²/(σ²+ε))",
                   "BN gain 1/√(σ²+ε)", "outcome", "final loss"], out)


def lr_table(lr):
    out = [[bn, _fmt(rate, "g"), f"×{g[0].multiplier:g}", tally(r.outcome for r in g),
            fmt([r.final_loss for r in g], ".4g"), pct([r.test_accuracy for r in g])]
           for (bn, rate), g in _grouped(lr.rows, ("bn", "lr")).items()]
    return _table(["BN", "lr", "× base", "outcome", "final loss", "test acc"], out)


def dropout_table(groups):
    rows = []
    for g in groups.values():
        recs = g.seeds
        rows.append([g.label, pct([r.test_points[-1][1] if r.test_points else None for r in recs]),
                     pct([r.final("test_accuracy") for r in recs]), pct([r.best() for r in recs]),
                     fmt([dropout_gap(r) for r in recs], ".1f", 100, " pt"),
                     pct([r.final("train_accuracy") for r in recs]), tally(r.outcome for r in recs), _stopped(g)])
    return _table(["configuration", "final train acc (eval mode)", "final test acc", "best test acc",
                   "train–test gap", "train acc (running, with Dropout)", "outcome", "stopped at chance"], rows)


def optimizer_tables(results, groups):
    runs, o = results.runs, results.options
    rows = []
    for g in groups.values():
        sgd = runs.get(g.config_key)
        rows.append([g.label, tally(r.outcome for r in g.seeds), fmt([r.final("train_loss") for r in g.seeds], ".4f"),
                     pct([r.final("test_accuracy") for r in g.seeds]), pct([r.best() for r in g.seeds]),
                     tally(r.outcome for r in sgd.seeds) if sgd else "—",
                     pct([r.best() for r in sgd.seeds]) if sgd else "—", _stopped(g)])
    parts = [_table(["configuration", "outcome", "final train loss", "test acc", "best test acc",
                     "SGD outcome (main)", "SGD best test acc", "stopped at chance"], rows), ""]
    layers = []
    for g in groups.values():
        for r in g.seeds:
            for step in r.gradients[:1]:
                layers += [n for n in step["layers"] if n not in layers]
    last = o["probe_steps"]
    for title, field, step, spec in (("gradient RMS at step 1", "grad_rms", 1, ".1e"),
                                     ("update RMS / weight RMS at step 1", None, 1, ".1e"),
                                     (f"share of weights where ε > √v̂ (ε sets the step) at step {last}",
                                      "eps_dominated", last, ".1%"),
                                     (f"share of weights whose v underflowed to 0 although g ≠ 0 at step {last}",
                                      "v_underflow", last, ".1%")):
        table = []
        for g in groups.values():
            cells = []
            for n in layers:
                vals = []
                for r in g.seeds:
                    rec = next((x for x in r.gradients if x["step"] == step), None)
                    row = rec["layers"].get(n) if rec else None
                    if row:
                        vals.append(row.get(field) if field else row["update_rms"] / row["weight_rms"])
                cells.append(_fmt(_mean(vals), spec))
            table.append([g.label] + cells)
        parts += [f"Per layer, {title} (mean over seeds):", "", _table(["run"] + layers, table), ""]
    return "\n".join(parts)


def write_report(results, out_dir, plots=True):
    """Write ``results`` (a ``records.Results``) to results.json, report.md and the plots."""
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, os.path.join(out_dir, "results.json"))
    plot_note = write_plots(results, out_dir) if plots else "Plots were not requested."
    o = results.options
    parts = ["# Small-initialization experiment: results", "",
             f"Total wall time: {results.total_seconds:.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in results.part_seconds.items())}). {results.machine}", "",
             f"Seeds: {', '.join(str(s) for s in o['seeds'])}. Figures are mean ± std (min–max) over the seeds; "
             "an outcome is listed with its count where seeds disagree.", ""]
    if o.get("chance_tol"):
        parts += [f"Runs whose mean training loss stayed within {o['chance_tol']:g} of ln 10 for a whole epoch "
                  "(no batch further than 0.05) were stopped there: the column 'stopped at chance' names them.", ""]
    claims = claims_table(results)
    if claims:
        parts += ["## Claims", "", _table(["claim", "our setting", "outcome", "figure", "command"], claims), ""]
    runs = results.groups("main")
    if runs:
        parts += ["## Configurations", "", main_table(runs), "",
                  "## Per-layer pre-activation scale at initialization (std of each layer's output)", "",
                  preact_table(runs), ""]
    if results.steps:
        parts += ["## Steps to the control's best validation accuracy", "", steps_table(results), ""]
    if results.eps_sweep:
        parts += ["## BN epsilon sweep, configuration (c)", "", eps_table(results.eps_sweep), ""]
    if results.lr_sweep:
        big = results.lr_sweep.largest_lr_that_trains
        parts += ["## Learning-rate sweep (He init; BN everywhere vs no BN)", "", lr_table(results.lr_sweep), "",
                  f"Largest rate at which every seed trains: with BN {_fmt(big.get('all'), 'g')}, "
                  f"without {_fmt(big.get('none'), 'g')}.", ""]
    dropout = results.groups("dropout")
    if dropout:
        parts += [f"## Dropout where the model overfits ({o['dropout_epochs']} epochs, no augmentation, "
                  f"{o['dropout_schedule']} rate, weight decay {o['dropout_weight_decay']:g}, He init)", "",
                  dropout_table(dropout), "",
                  f"Training accuracy in eval mode is measured on the first {o['train_eval_size']} training images "
                  "at each epoch's end; the gap is it minus the test accuracy at the end.", ""]
    optimizer = results.groups("optimizer")
    if optimizer:
        parts += [f"## (a)–(d) under {o['optimizer']} (lr {o['optimizer_lr']:g}, weight decay "
                  f"{o['optimizer_weight_decay']:g}, BN ε 1e-5)", "", optimizer_tables(results, optimizer), ""]
    if results.scale_invariance:
        rows = [[r.init, _fmt(r.k, "g"), _fmt(r.conv_output_var, ".2e"), _fmt(r.bn_eps, ".0e"),
                 _fmt(r.output_rel_change, ".2e"), _fmt(r.grad_ratio, ".6g"), _fmt(1 / r.k, ".6g"),
                 _fmt(r.grad_rel_error, ".2e")] for r in results.scale_invariance]
        parts += ["## Scale invariance: conv2's weights × k, BN after it", "",
                  _table(["init", "k", "conv2 output variance", "ε", "BN output rel. change",
                          "dW ratio", "ideal 1/k", "rel. error of k·dW vs dW"], rows), ""]
    parts += ["## Plots", "", plot_note, ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(parts))
    return os.path.join(out_dir, "report.md")


def _band_plot(ax, curves, label, scale=1.0, **kw):
    """The mean over seeds as a line, min–max as a shaded band."""
    xs, mean, lo, hi = band(curves)
    if not xs:
        return
    line, = ax.plot(xs, scale * mean, label=label, **kw)
    if len(curves) > 1:
        ax.fill_between(xs, scale * lo, scale * hi, color=line.get_color(), alpha=0.2, lw=0)


def _points(rec, index=1):
    return ([p[0] for p in rec.test_points], [p[index] for p in rec.test_points])


def _epoch_curve(rec, key):
    return ([h["step"] for h in rec.history], [h.get(key) for h in rec.history])


def write_plots(results, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib is not installed, so no plots were drawn: `pip install "cybn[plot]"` and rerun.'
    made = []
    nan = float("nan")
    runs = results.groups("main")
    if runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        layers = []
        for e in runs.values():
            layers += [n for n in e.seeds[0].preact_at_init if "+bn" not in n and n not in layers]
        for e in runs.values():
            scales = e.seeds[0].preact_at_init
            line, = ax.semilogy(range(len(layers)), [scales[n].std if n in scales else nan for n in layers],
                                "o-", label=e.label)
            after_bn = [scales[n + "+bn"].std if n + "+bn" in scales else nan for n in layers]
            if any(math.isfinite(v) for v in after_bn):
                ax.semilogy(range(len(layers)), after_bn, "x--", color=line.get_color(), lw=0.8)
        ax.set_xticks(range(len(layers)), layers, fontsize=7)
        ax.set_ylabel("std of layer output at init")
        ax.set_title("Pre-activation scale at init, first seed (solid: conv/linear output; dashed: after BN)",
                     fontsize=8)
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "preactivations_init.png"))
        made.append(_curves(plt, runs, out_dir, "curves.png", "test accuracy (%)"))
    steps = results.groups("steps")
    if steps:
        made.append(_curves(plt, steps, out_dir, "steps.png", "validation accuracy (%)"))
    dropout = results.groups("dropout")
    if dropout:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for e in dropout.values():
            _band_plot(ax, [_epoch_curve(r, "test_accuracy") for r in e.seeds], f"{e.label}: test", 100.0)
            _band_plot(ax, [_points(r) for r in e.seeds], f"{e.label}: train (eval mode)", 100.0,
                       ls="--", color=ax.lines[-1].get_color())
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Dropout where the model overfits (bands: min–max over seeds)", fontsize=8)
        ax.legend(fontsize=6)
        made.append(_save(fig, out_dir, "dropout.png"))
    optimizer = results.groups("optimizer")
    if optimizer:
        fig, axes = plt.subplots(1, len(optimizer), figsize=(2.6 * len(optimizer), 3.0), squeeze=False, sharey=True)
        for ax, e in zip(axes[0], optimizer.values()):
            grads = e.seeds[0].gradients
            for n in (grads[0]["layers"] if grads else {}):
                ax.semilogy([g["step"] for g in grads], [g["layers"][n]["grad_rms"] for g in grads], lw=0.8, label=n)
            ax.set_title(e.label, fontsize=6)
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("gradient RMS (first seed)")
        axes[0][0].legend(fontsize=5)
        made.append(_save(fig, out_dir, "optimizer_gradients.png"))
    if results.eps_sweep:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        rows = results.eps_sweep
        for bias, lr in sorted({(r.bias, r.lr) for r in rows}, reverse=True):
            groups = _grouped([r for r in rows if (r.bias, r.lr) == (bias, lr)], ("eps",))
            pts = []
            for (eps,), g in sorted(groups.items()):
                s = summary([r.final_loss for r in g if r.outcome != "diverged"])
                pts.append((eps, s["mean"] if s else float("nan"), s["min"] if s else float("nan"),
                            s["max"] if s else float("nan")))
                if any(r.outcome == "diverged" for r in g):
                    ax.plot(eps, 1.5 * CHANCE, "x", color="red")
            eps, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(eps, mean, yerr=[mean - lo, hi - mean], fmt="o-" if bias else "s--", capsize=2,
                        label=f"lr {lr:g}, {'with' if bias else 'no'} biases")
        ax.set_xscale("log")
        var = [r.last_layer_var_at_init for r in rows if r.last_layer_var_at_init]
        if var:
            ax.axvline(min(var), color="gray", ls="--", lw=0.8, label="last-layer variance at init")
        ax.axhline(CHANCE, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("BN ε")
        ax.set_ylabel("final training loss (x = diverged)")
        ax.set_title("(c) BN on last layer only: ε sweep (bars: min–max over seeds)", fontsize=8)
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "eps_sweep.png"))
    if results.lr_sweep:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        rows = results.lr_sweep.rows
        for bn, label in (("all", "BN everywhere"), ("none", "no BN")):
            groups = sorted(_grouped([r for r in rows if r.bn == bn], ("lr",)).items())
            stats = [(lr, summary([100 * (r.test_accuracy or 0) for r in g])) for (lr,), g in groups]
            lrs = np.array([lr for lr, _ in stats])
            mean = np.array([s["mean"] for _, s in stats])
            ax.errorbar(lrs, mean, yerr=[mean - [s["min"] for _, s in stats], [s["max"] for _, s in stats] - mean],
                        fmt="o-", capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("test accuracy after the sweep budget (%)")
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "lr_sweep.png"))
    return "\n".join(f"![{name}]({name})" for name in made)


def _curves(plt, entries, out_dir, name, ylabel):
    """Training loss and periodic accuracy against steps, mean over seeds with min–max bands."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for e in entries.values():
        _band_plot(ax1, [tuple(zip(*r.losses)) for r in e.seeds if r.losses], e.label, lw=0.8)
        _band_plot(ax2, [_points(r) for r in e.seeds if r.test_points], e.label, 100.0, marker="o", ms=2)
    ax1.axhline(CHANCE, color="gray", ls=":", lw=0.8)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax2.set_xlabel("step")
    ax2.set_ylabel(ylabel)
    ax2.legend(fontsize=6)
    return _save(fig, out_dir, name)


def _save(fig, out_dir, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=80)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return name
