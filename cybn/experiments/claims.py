"""The table of claims at the top of the report: each claim of the review and of the BN paper the
experiment tests, our setting, the outcome over every seed, the figure and the command."""
from .seeds import fmt, pct, tally

REPRODUCED, NOT_REPRODUCED, DISAGREE = "reproduced", "not reproduced", "seeds disagree"


def _verdict(flags):
    """reproduced if it holds for every seed, not reproduced if for none, else seeds disagree."""
    flags = list(flags)
    if not flags:
        return "not measured"
    return REPRODUCED if all(flags) else NOT_REPRODUCED if not any(flags) else DISAGREE


def command(results, part, extra=""):
    """The command that reruns ``part``; ``extra`` carries its length, which the defaults may not."""
    seeds = ",".join(str(s) for s in results.options["seeds"])
    quick = " --quick" if results.quick else ""
    return f"`cybn experiment small-init --parts {part} --seeds {seeds}{extra}{quick}`"


def _seeds(results, key):
    return results.runs[key].seeds if key in results.runs else []


def main_claims(results):
    o = results.options
    rows = []
    epochs = f" --epochs {o['epochs']}"
    setting = f"cnn7, SGD lr {o['lr']:g} cosine, {o['epochs']} epochs, {len(o['seeds'])} seed(s)"
    wants = {"a": ("(a) no BN with U(±0.001) does not train", lambda r: r.outcome != "trains"),
             "b": ("(b) BN after every layer trains from U(±0.001)", lambda r: r.outcome == "trains"),
             "c": ("(c) BN on the last layer alone trains from U(±0.001)", lambda r: r.outcome == "trains"),
             "d": ("(d) the control, no BN with He init, trains", lambda r: r.outcome == "trains")}
    for key, (claim, holds) in wants.items():
        recs = _seeds(results, key)
        if not recs:
            continue
        verdict = _verdict(holds(r) for r in recs)
        if key == "c" and verdict != REPRODUCED:
            verdict += f" at BN ε={recs[0].config['bn_eps']:g}" + _eps_condition(results)
        figure = (f"{tally(r.outcome for r in recs)}; final train loss {fmt([r.final('train_loss') for r in recs], '.4f')}"
                  f", test acc {pct([r.final('test_accuracy') for r in recs])}")
        rows.append([claim, setting, verdict, figure, command(results, "main", f" --configs {key}{epochs}")])
    b, d = _seeds(results, "b"), _seeds(results, "d")
    if b and d:
        pairs = [(rb, rd) for rb in b for rd in d if rb.seed == rd.seed]
        rows.append(["(b) matches the control (d)'s best test accuracy", setting,
                     _verdict(rb.best() >= rd.best() for rb, rd in pairs),
                     f"best test acc (b) {pct([r.best() for r in b])}, (d) {pct([r.best() for r in d])}",
                     command(results, "main", f" --configs b,d{epochs}")])
    return rows


def _eps_condition(results):
    """'; holds only with ...' when some (c) sweep setting trains for every seed."""
    groups = {}
    for r in results.eps_sweep:
        groups.setdefault((r.bias, r.lr, r.eps), []).append(r.outcome == "trains")
    if not groups:
        return " (the ε sweep was not run: --parts eps)"
    ok = sorted(k for k, v in groups.items() if all(v))
    if not ok:
        return "; no ε sweep setting trains for every seed"
    text = ", ".join(f"{'with' if b else 'no'} biases, lr {lr:g}, ε {eps:.0e}" for b, lr, eps in ok)
    return f"; holds only with {text} (ε sweep)"


def steps_claims(results):
    steps = results.steps
    if not steps:
        return []
    o = results.options
    rows = []
    for init in dict.fromkeys(r.init for r in steps.rows):
        mine = [r for r in steps.rows if r.init == init]
        mults = sorted({r.multiplier for r in mine})
        parts = []
        for m in mults:
            ratios = [r.ratio for r in mine if r.multiplier == m]
            missed = sum(v is None for v in ratios)
            parts.append(f"×{m:g}: {fmt(ratios, '.2f')}" + (f" (not reached ×{missed})" if missed else ""))
        flags = [r.ratio is not None and r.ratio > 1 for r in mine if r.multiplier == max(mults)]
        rows.append([f"BN reaches the control's best accuracy in fewer steps (paper: 14× fewer at BN-x5), {init} init",
                     f"validation split of {steps.val_size}, evaluated every {steps.eval_every} steps, "
                     f"{o.get('steps_epochs') or o['epochs']} epochs",
                     _verdict(flags) + f" at ×{max(mults):g}", "control steps / BN steps " + "; ".join(parts),
                     command(results, "steps", f" --steps-epochs {o.get('steps_epochs') or o['epochs']}")])
    return rows


def lr_claims(results):
    if not results.lr_sweep:
        return []
    big = results.lr_sweep.largest_lr_that_trains
    holds = big.get("all") is not None and (big.get("none") is None or big["all"] > big["none"])
    return [["BN allows higher learning rates", f"He init, constant rate, {results.options['sweep_steps']} steps",
             REPRODUCED if holds else NOT_REPRODUCED,
             f"largest rate every seed trains at: BN {big.get('all')}, no BN {big.get('none')}",
             command(results, "lr")]]


def dropout_gap(rec):
    """Final training accuracy (eval mode, on the training subset) minus final test accuracy."""
    test = rec.final("test_accuracy")
    return rec.test_points[-1][1] - test if rec.test_points and test is not None else None


def dropout_claims(results):
    o = results.options
    keys = {(bn, p): f"dropout_{bn}_{p:g}" for bn in ("none", "all") for p in (0.0, o["dropout"])}
    if not all(k in results.runs for k in keys.values()):
        return []
    top = {k: {r.seed: r.best() for r in results.runs[key].seeds} for k, key in keys.items()}
    gap = {k: {r.seed: dropout_gap(r) for r in results.runs[key].seeds} for k, key in keys.items()}
    seeds = sorted(top["none", 0.0])
    gain = {bn: [top[bn, o["dropout"]][s] - top[bn, 0.0][s] for s in seeds] for bn in ("none", "all")}
    overfits = all((gap["none", 0.0][s] or 0) > 0.05 for s in seeds)
    verdict = (_verdict(gain["all"][i] < gain["none"][i] for i in range(len(seeds))) if overfits
               else "not testable: the no-BN control does not overfit (train–test gap ≤ 5 points)")
    figure = (f"train–test gap without BN {pct(gap['none', 0.0].values())}; Dropout changes best test acc by "
              f"{fmt(gain['none'], '+.1f', 100, ' pt')} without BN, {fmt(gain['all'], '+.1f', 100, ' pt')} with BN")
    return [["BN reduces the need for Dropout (Dropout helps less with BN)",
             f"He init, no augmentation, {o['dropout_schedule']} rate, {o['dropout_epochs']} epochs, "
             f"Dropout({o['dropout']:g})", verdict, figure,
             command(results, "dropout", f" --dropout-epochs {o['dropout_epochs']}")]]


def optimizer_claims(results):
    groups = list(results.groups("optimizer").values())
    o = results.options
    rows = []
    for eps in sorted({g.adam_eps for g in groups}, reverse=True):
        same, text = [], []
        for g in (g for g in groups if g.adam_eps == eps):
            adam = tally(r.outcome for r in g.seeds)
            sgd = tally(r.outcome for r in results.runs[g.config_key].seeds) if g.config_key in results.runs else None
            if sgd is not None:
                same.append(adam == sgd)
            text.append(f"({g.config_key}) {adam}" + (f" [SGD: {sgd}]" if sgd is not None and sgd != adam else ""))
        verdict = ("same outcomes as SGD" if same and all(same) else
                   "differs from SGD" if same else "no SGD runs to compare")
        rows.append([f"(a)–(d) do not depend on the optimizer: {o['optimizer']}, ε={eps:g}",
                     f"lr {o['optimizer_lr']:g} cosine, weight decay {o['optimizer_weight_decay']:g}, "
                     f"{o.get('optimizer_epochs') or o['epochs']} epochs, BN ε 1e-5",
                     verdict, "; ".join(text),
                     command(results, "main,optimizer", f" --epochs {o['epochs']} --optimizer-epochs "
                                                        f"{o.get('optimizer_epochs') or o['epochs']}")])
    return rows


def scale_claims(results):
    rows = [r for r in results.scale_invariance if r.init == "he" and r.k > 1]
    if not rows:
        return []
    worst = max(r.output_rel_change for r in rows)
    return [["BN makes a layer invariant to the scale of its weights (and dW scales as 1/k)",
             "float64 cnn7, BN everywhere, He init, conv2 × k", REPRODUCED if worst < 1e-4 else NOT_REPRODUCED,
             f"largest BN output change {worst:.1e} for k > 1", command(results, "scale")]]


def claims_table(results):
    """Rows [claim, setting, outcome, figure, command] for every part in ``results``."""
    rows = []
    for part in (main_claims, steps_claims, lr_claims, dropout_claims, optimizer_claims, scale_claims):
        rows += part(results)
    return rows
