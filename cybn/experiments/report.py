"""Write an experiment's results: results.json (every figure), report.md (tables) and PNG plots.

Plots need matplotlib (``pip install "cybn[plot]"``); without it the report says so and the
tables are still written.
"""
import math
import os

from .records import last_preactivation, write_results

CHANCE = math.log(10.0)


def _fmt(v, spec=".3g"):
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _pct(v):
    return "—" if v is None else f"{100 * v:.1f} %"


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _last_layer_std(scales):
    _, last = last_preactivation(scales)
    return last.std if last else None


def _std(scales, name, spec):
    return _fmt(scales[name].std, spec) if name in scales else "—"


def main_table(runs):
    rows = []
    for key, r in runs.items():
        last = r.history[-1] if r.history else {}
        best = max((h.get("test_accuracy") or 0 for h in r.history), default=None)
        rows.append([r.label, _fmt(r.config["lr"], "g"), r.outcome, _fmt(last.get("train_loss"), ".4f"),
                     _pct(last.get("train_accuracy")), _pct(last.get("test_accuracy")), _pct(best),
                     _fmt(_last_layer_std(r.preact_at_init), ".2e"),
                     f"{r.seconds:.0f} s", _fmt(r.images_per_s, ".0f")])
    return _table(["configuration", "peak lr", "outcome", "final train loss", "train acc", "test acc", "best test acc",
                   "last-layer pre-activation std at init", "wall time", "images/s"], rows)


def preact_table(runs):
    names = []
    for r in runs.values():
        names += [n for n in r.preact_at_init if n not in names]
    rows = [[r.label] + [_std(r.preact_at_init, n, ".1e") for n in names] for r in runs.values()]
    return _table(["std at init"] + names, rows)


def write_report(results, out_dir, plots=True):
    """Write ``results`` (a ``records.Results``) to results.json, report.md and the plots."""
    os.makedirs(out_dir, exist_ok=True)
    write_results(results, os.path.join(out_dir, "results.json"))
    plot_note = write_plots(results, out_dir) if plots else "Plots were not requested."
    parts = ["# Small-initialization experiment: results", "",
             f"Total wall time: {results.total_seconds:.0f} s. {results.machine}", ""]
    runs = results.runs
    if runs:
        parts += ["## Configurations", "", main_table(runs), "",
                  "## Per-layer pre-activation scale at initialization (std of each layer's output)", "",
                  preact_table(runs), ""]
    ratios = {k: v for k, v in results.steps_to_control_best.items() if v}
    if ratios:
        rows = [[runs[k].label, _fmt(runs[k].config["lr"], "g"), _fmt(r.bn_steps),
                 _fmt(r.ratio, ".2f") + ("×" if r.ratio else " (not reached)")] for k, r in ratios.items()]
        first = next(iter(ratios.values()))
        parts += ["## Steps to the control's best test accuracy", "",
                  f"The control (d) reached its best test accuracy, {_pct(first.control_best_accuracy)}, "
                  f"at step {first.control_steps} (test accuracy is measured {results.options['evals_per_epoch']} "
                  f"times per epoch).", "",
                  _table(["BN run", "peak lr", "step it reached that accuracy", "control steps / BN steps"], rows), ""]
    if results.eps_sweep:
        rows = [["yes" if r.bias else "no", _fmt(r.lr, "g"), _fmt(r.eps, ".0e"),
                 _fmt(r.last_layer_var_at_init, ".2e"), _fmt(r.xhat_scale_at_init, ".2e"),
                 _fmt(r.bn_gain_at_init, ".2e"), r.outcome, _fmt(r.final_loss, ".4f")] for r in results.eps_sweep]
        parts += ["## BN epsilon sweep, configuration (c)", "",
                  _table(["biases", "lr", "ε", "last-layer batch variance at init", "std of x̂ = √(σ²/(σ²+ε))",
                          "BN gain 1/√(σ²+ε)", "outcome", "final loss"], rows), ""]
    lr = results.lr_sweep
    if lr:
        rows = [[r.bn, _fmt(r.lr, "g"), f"×{r.multiplier}", r.outcome, _fmt(r.final_loss, ".4f"),
                 _pct(r.test_accuracy)] for r in lr.rows]
        parts += ["## Learning-rate sweep (He init; BN everywhere vs no BN)", "",
                  _table(["BN", "lr", "× base", "outcome", "final loss", "test acc"], rows), "",
                  f"Largest rate that trains: with BN {_fmt(lr.largest_lr_that_trains.get('all'), 'g')}, "
                  f"without {_fmt(lr.largest_lr_that_trains.get('none'), 'g')}.", ""]
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


def write_plots(results, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib is not installed, so no plots were drawn: `pip install "cybn[plot]"` and rerun.'
    made = []
    runs = results.runs
    if runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        layers = []
        for r in runs.values():
            layers += [n for n in r.preact_at_init if "+bn" not in n and n not in layers]
        nan = float("nan")
        for r in runs.values():
            scales = r.preact_at_init
            line, = ax.semilogy(range(len(layers)), [scales[n].std if n in scales else nan for n in layers],
                                "o-", label=r.label)
            after_bn = [scales[n + "+bn"].std if n + "+bn" in scales else nan for n in layers]
            if any(math.isfinite(v) for v in after_bn):
                ax.semilogy(range(len(layers)), after_bn, "x--", color=line.get_color(), lw=0.8)
        ax.set_xticks(range(len(layers)), layers, fontsize=7)
        ax.set_ylabel("std of layer output at init")
        ax.set_title("Pre-activation scale at init (solid: conv/linear output; dashed: after BN)", fontsize=8)
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "preactivations_init.png"))

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        for r in runs.values():
            if r.losses:
                s, v = zip(*r.losses)
                ax1.plot(s, v, label=r.label, lw=0.8)
            if r.test_points:
                s, acc, _ = zip(*r.test_points)
                ax2.plot(s, [100 * a for a in acc], "o-", ms=2, label=r.label)
        ax1.axhline(CHANCE, color="gray", ls=":", lw=0.8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax2.set_xlabel("step")
        ax2.set_ylabel("test accuracy (%)")
        ax2.legend(fontsize=7)
        made.append(_save(fig, out_dir, "curves.png"))
    if results.eps_sweep:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        rows = results.eps_sweep
        for bias, lr in sorted({(r.bias, r.lr) for r in rows}, reverse=True):
            group = [r for r in rows if (r.bias, r.lr) == (bias, lr)]
            pts = [(r.eps, r.final_loss if r.outcome != "diverged" else float("nan")) for r in group]
            ax.semilogx(*zip(*pts), "o-" if bias else "s--",
                        label=f"lr {lr:g}, {'with' if bias else 'no'} biases")
            for r in group:
                if r.outcome == "diverged":
                    ax.plot(r.eps, 1.5 * CHANCE, "x", color="red")
        var = [r.last_layer_var_at_init for r in rows if r.last_layer_var_at_init]
        if var:
            ax.axvline(min(var), color="gray", ls="--", lw=0.8, label="last-layer variance at init")
        ax.axhline(CHANCE, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("BN ε")
        ax.set_ylabel("final training loss (x = diverged)")
        ax.set_title("(c) BN on last layer only: ε sweep")
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "eps_sweep.png"))
    if results.lr_sweep:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        rows = results.lr_sweep.rows
        for bn, label in (("all", "BN everywhere"), ("none", "no BN")):
            pts = [(r.lr, 100 * (r.test_accuracy or 0)) for r in rows if r.bn == bn]
            ax.semilogx(*zip(*pts), "o-", label=label)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("test accuracy after the sweep budget (%)")
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir, "lr_sweep.png"))
    return "\n".join(f"![{name}]({name})" for name in made)


def _save(fig, out_dir, name):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=80)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return name
