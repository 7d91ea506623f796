"""The metrics-integrity report: checks that catch broken bookkeeping, not bad models.

Each check returns one or more :class:`CheckResult`. Thresholds are deliberately loose where a
healthy run could trip them (a short or noisy run must pass without warnings) and exact where
no real training can produce the pattern (a loss of exactly 0.0, a validation loss identical to
the last bit for several epochs). See docs/analysis.md for what each id means and what to do.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Callable

import numpy as np

from common.analysis.report import CheckResult, Report
from common.analysis.series import ACCURACY_METRICS, LOSS_METRICS, EpochSeries, RunData, Source

# Cross-source agreement: JSON/binary values must agree to float precision of the writer
# (TensorBoard stores float32); printed values additionally by half their last digit.
REL_TOL = 1e-3
ABS_TOL = 1e-4
# "Learning" means the training loss fell by at least this fraction of its first value.
LEARNING_DROP = 0.05
MIN_EPOCHS_NO_LEARNING = 3
MIN_EPOCHS_DIVERGENCE = 4
DIVERGENCE_RISE = 0.10  # val loss 10% above its minimum while train loss keeps falling
# Validation loss above chance: by 2% of ln C, while training loss is below 90% of ln C, at
# two epochs or more (one noisy epoch is not a finding).
VAL_CHANCE_MARGIN, TRAIN_LEARNED, VAL_CHANCE_MIN_EPOCHS = 1.02, 0.9, 2
# A first-epoch mean loss above this is worse than guessing uniformly for a whole epoch.
INIT_FACTOR, INIT_OFFSET = 1.5, 1.0
# Metrics whose exact repetition is normal (a constant LR schedule, a fixed dataset size).
_NO_DEAD_CHECK = {"lr", "step", "epoch_time", "train.throughput"}

Check = Callable[[RunData], list[CheckResult]]


def run_checks(run: RunData) -> Report:
    results: list[CheckResult] = []
    for check in CHECKS:
        results.extend(check(run))
    ends = [s.last_epoch() for s in run.sources if s.last_epoch() is not None]
    return Report(checks=results, num_classes=run.num_classes, dataset_sizes=dict(run.dataset_sizes),
                  sources=[s.describe() for s in run.sources], last_epoch=max(ends) if ends else None)


# --- helpers -----------------------------------------------------------------------------------


def chance_loss(run: RunData) -> float | None:
    return math.log(run.num_classes) if run.num_classes and run.num_classes >= 2 else None


def all_zero(series: EpochSeries) -> bool:
    return len(series) > 0 and bool(np.all(series.values == 0.0))


def ordered_sources(run: RunData) -> list[Source]:
    return [s for s in run.sources if not s.approximate] + [s for s in run.sources if s.approximate]


def trusted(run: RunData, name: str) -> EpochSeries | None:
    """The series to reason about: first exact source whose values are not all zero (a dead
    copy must not hide the live one) and not all non-finite."""
    for source in ordered_sources(run):
        series = source.series.get(name)
        if series is not None and len(series) and not all_zero(series) and np.isfinite(series.values).any():
            return series.finite()
    return None


def value_at(series: EpochSeries | None, epoch: int) -> float | None:
    if series is None:
        return None
    return series.by_epoch().get(epoch)


def is_learning(run: RunData) -> bool:
    loss = trusted(run, "train.loss")
    if loss is None or len(loss) < 2:
        return False
    first, last = float(loss.values[0]), float(loss.values[-1])
    return first > 0 and last < first * (1 - LEARNING_DROP)


def passed(check_id: str, message: str) -> list[CheckResult]:
    return [CheckResult(check_id, "pass", message)]


def skipped(check_id: str, reason: str) -> list[CheckResult]:
    return [CheckResult(check_id, "skipped", f"skipped: {reason}", reason=reason)]


def fmt(values: np.ndarray | list, limit: int = 6) -> str:
    items = [f"{v:.6g}" for v in list(values)[:limit]]
    return ", ".join(items) + (", ..." if len(values) > limit else "")


def each_series(run: RunData, names: tuple[str, ...] | None = None):
    for source in run.sources:
        for name, series in source.series.items():
            if len(series) and (names is None or name in names):
                yield source, series


def no_data(check_id: str, run: RunData) -> list[CheckResult] | None:
    if not any(s.series for s in run.sources):
        return skipped(check_id, "no epoch metrics recorded yet")
    return None


# --- checks ------------------------------------------------------------------------------------


def check_nonfinite(run: RunData) -> list[CheckResult]:
    out = []
    for source, series in each_series(run):
        bad = ~np.isfinite(series.values)
        if bad.any():
            out.append(CheckResult(
                "nonfinite", "fail",
                f"{int(bad.sum())} non-finite value(s): the loss diverged or a metric divided by zero",
                series.name, source.name, series.epochs[bad].tolist(), series.values[bad].tolist()))
    for source in run.sources:
        for stream in source.steps.values():
            if stream.name != "step.train_loss":
                continue  # a missing step lr is absence, not divergence
            bad = ~np.isfinite(stream.values)
            if bad.any():
                out.append(CheckResult(
                    "nonfinite", "fail", f"{int(bad.sum())} non-finite step value(s), first at step {int(stream.steps[bad][0])}",
                    stream.name, source.name,
                    sorted(set(stream.epochs[bad].tolist()))[:50] if stream.epochs is not None else [],
                    stream.values[bad][:50].tolist(), details={"steps": stream.steps[bad][:50].tolist()}))
    return out or no_data("nonfinite", run) or passed("nonfinite", "all values are finite")


def check_epochs(run: RunData) -> list[CheckResult]:
    """Missing or duplicated epochs per series (a lost record, or a resume that re-appended)."""
    out = []
    for source, series in each_series(run):
        epochs = series.epochs
        uniq, counts = np.unique(epochs, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            out.append(CheckResult(
                "epochs_duplicated", "fail",
                f"epoch(s) {fmt(dup)} recorded more than once: a resume appended instead of replacing",
                series.name, source.name, dup.tolist(), counts[counts > 1].tolist()))
        missing = missing_epochs(uniq)
        if missing:
            out.append(CheckResult(
                "epochs_missing", "fail", f"epoch(s) {fmt(missing)} missing between {int(uniq[0])} and {int(uniq[-1])}",
                series.name, source.name, missing, []))
        if uniq.size and uniq[0] > 1 and not missing:
            stride = np.diff(uniq)
            if not (stride.size and np.all(stride == stride[0]) and uniq[0] == stride[0]):
                out.append(CheckResult(
                    "epochs_missing", "warn", f"starts at epoch {int(uniq[0])}, not 1 (resumed without the earlier history?)",
                    series.name, source.name, [int(uniq[0])], []))
    if not out:
        return no_data("epochs_duplicated", run) or (
            passed("epochs_duplicated", "every epoch recorded once") + passed("epochs_missing", "no gaps in the epochs"))
    ids = {r.id for r in out}
    for check_id, msg in (("epochs_duplicated", "every epoch recorded once"), ("epochs_missing", "no gaps in the epochs")):
        if check_id not in ids:
            out.extend(passed(check_id, msg))
    return out


def missing_epochs(uniq: np.ndarray) -> list[int]:
    if uniq.size < 2:
        return []
    steps = np.diff(uniq)
    # Evaluated every k epochs (2, 4, 6, ...) is a schedule, not a gap.
    if np.all(steps == steps[0]) and uniq[0] == steps[0]:
        return []
    return sorted(set(range(int(uniq[0]), int(uniq[-1]) + 1)) - set(uniq.tolist()))


def check_steps(run: RunData) -> list[CheckResult]:
    out = []
    seen = False
    for source in run.sources:
        sequences = []
        if source.step_sequence is not None and source.step_sequence.size > 1:
            sequences.append(("optimizer steps in write order", source.step_sequence, None))
        if "step" in source.series and len(source.series["step"]) > 1:
            s = source.series["step"]
            sequences.append(("step at the end of each epoch", s.values, s.epochs))
        for what, steps, epochs in sequences:
            seen = True
            back = np.flatnonzero(np.diff(steps) < 0) + 1
            if back.size:
                out.append(CheckResult(
                    "steps_backwards", "fail",
                    f"{what} went backwards {back.size} time(s) (e.g. {int(steps[back[0] - 1])} -> {int(steps[back[0]])}): "
                    "a resume re-ran steps and both copies were kept",
                    "step", source.name, epochs[back].tolist() if epochs is not None else [],
                    steps[back][:50].tolist(), details={"previous": steps[back - 1][:50].tolist()}))
    if out:
        return out
    if not seen:
        return skipped("steps_backwards", "no step counter recorded")
    return passed("steps_backwards", "steps only move forward")


def check_dead(run: RunData) -> list[CheckResult]:
    """Exactly zero throughout, or stopped updating, while the run is alive."""
    out = []
    learning = is_learning(run)
    chance = chance_loss(run)
    for source, series in each_series(run):
        if series.name in _NO_DEAD_CHECK:
            continue
        last = source.last_epoch()
        if series.name in LOSS_METRICS or series.name.endswith(".samples"):
            if all_zero(series):
                out.append(CheckResult(
                    "dead_metric", "fail",
                    "exactly 0.0 at every epoch: cross-entropy cannot be 0 on real data, so this value is never written "
                    "(e.g. accumulated into a variable that is never read)" if series.name in LOSS_METRICS else
                    "sample count is 0 at every epoch: the metric is never accumulated",
                    series.name, source.name, series.epochs.tolist(), series.values.tolist()))
                continue
        elif series.name in ACCURACY_METRICS and all_zero(series):
            evidence = accuracy_evidence(run, series, learning, chance)
            if evidence:
                out.append(CheckResult(
                    "dead_metric", "fail", f"exactly 0% at every epoch although {evidence}: the accuracy is never updated",
                    series.name, source.name, series.epochs.tolist(), series.values.tolist()))
                continue
        if last is not None and len(series) and int(series.epochs.max()) < last - epoch_stride(series):
            out.append(CheckResult(
                "dead_metric", "fail", f"last recorded at epoch {int(series.epochs.max())} while the source goes on to epoch {last}",
                series.name, source.name, [int(series.epochs.max())], [float(series.values[-1])]))
    return out or no_data("dead_metric", run) or passed("dead_metric", "every metric is alive")


def epoch_stride(series: EpochSeries) -> int:
    """Epochs between records (1, or k when validation runs every k epochs); a series may lag
    its source by that much (the other split of the current epoch is still running)."""
    uniq = np.unique(series.epochs)
    return int(np.min(np.diff(uniq))) if uniq.size > 1 else 1


def accuracy_evidence(run: RunData, series: EpochSeries, learning: bool, chance: float | None) -> str | None:
    for other in run.all_series(series.name):
        if other is not series and np.any(np.nan_to_num(other.values) > 0):
            return f"{other.source} reports {series.name} up to {np.nanmax(other.values):.4g}%"
    split = series.name.split(".")[0]
    loss = trusted(run, f"{split}.loss")
    if loss is not None and len(loss) >= 2 and learning:
        first, last = float(loss.values[0]), float(loss.values[-1])
        if chance is not None and last < 0.9 * chance:
            return f"{split} loss fell to {last:.4g} (chance level ln C = {chance:.4g})"
        if chance is None and last < first * 0.7:
            return f"{split} loss fell from {first:.4g} to {last:.4g}"
    return None


def check_constant(run: RunData) -> list[CheckResult]:
    out = []
    considered = False
    train = trusted(run, "train.loss")
    train_moves = train is not None and len(train) >= 2 and np.ptp(train.values) > 0.01 * abs(float(np.mean(train.values)))
    for source, series in each_series(run, LOSS_METRICS):
        finite = series.finite()
        # Printed (rounded) values can repeat on a plateau; demand more epochs before judging.
        needed = 2 if finite.resolution == 0 else 4
        if len(finite) < needed or all_zero(series):
            continue
        considered = True
        spread = float(np.ptp(finite.values))
        if spread > 1e-9 * max(1.0, float(np.max(np.abs(finite.values)))) + 2 * finite.resolution:
            continue
        value = float(finite.values[0])
        if series.name == "train.loss":
            out.append(CheckResult(
                "constant_series", "fail",
                f"training loss is {value:.6g} at every epoch: training loss never repeats exactly, so it is not being updated",
                series.name, source.name, finite.epochs.tolist(), finite.values.tolist()))
        elif train_moves:
            out.append(CheckResult(
                "constant_series", "fail",
                f"validation loss is {value:.6g} at every epoch while the training loss moves: "
                "validation is not re-run, runs on a frozen copy of the model, or reports a stale value",
                series.name, source.name, finite.epochs.tolist(), finite.values.tolist()))
        else:
            out.append(CheckResult(
                "constant_series", "warn", f"validation loss is {value:.6g} at every epoch",
                series.name, source.name, finite.epochs.tolist(), finite.values.tolist()))
    if out:
        return out
    if not considered:
        return skipped("constant_series", "needs at least 2 epochs of loss (4 for printed values)")
    return passed("constant_series", "losses change between epochs")


def check_init_loss(run: RunData) -> list[CheckResult]:
    chance = chance_loss(run)
    if chance is None:
        return skipped("init_loss", "number of classes unknown (pass --num-classes)")
    loss = trusted(run, "train.loss")
    if loss is None or int(loss.epochs[0]) != 1:
        return skipped("init_loss", "no training loss for epoch 1")
    first = float(loss.values[0])
    limit = INIT_FACTOR * chance + INIT_OFFSET
    if first > limit:
        return [CheckResult(
            "init_loss", "warn",
            f"epoch-1 training loss {first:.4g} is far above chance ln C = {chance:.4g} (limit {limit:.4g}). The epoch-1 "
            "mean already includes learning, so it should be at or below ln C: check the loss reduction (sum instead "
            "of mean?), the label range, the class count and the learning rate",
            "train.loss", loss.source, [1], [first], details={"chance_loss": chance, "limit": limit})]
    return passed("init_loss", f"epoch-1 training loss {first:.4g} is plausible against ln C = {chance:.4g}")


def check_val_above_chance(run: RunData) -> list[CheckResult]:
    chance = chance_loss(run)
    if chance is None:
        return skipped("val_above_chance", "number of classes unknown (pass --num-classes)")
    train = trusted(run, "train.loss")
    if train is None:
        return skipped("val_above_chance", "no training loss")
    out = []
    chance_acc = 100.0 / run.num_classes
    acc_limit = min(2 * chance_acc, chance_acc + (100 - chance_acc) / 4)
    for source, val in each_series(run, ("val.loss",)):
        if all_zero(val):
            continue
        top1 = source.series.get("val.top1") or trusted(run, "val.top1")
        bad_epochs, bad_values, explained = [], [], True
        for epoch, value in val.finite().by_epoch().items():
            t = value_at(train, epoch)
            # Margins keep a noisy first epoch of a small-C run (ln 2 = 0.69) from firing.
            if t is None or not (value > chance * VAL_CHANCE_MARGIN and t < TRAIN_LEARNED * chance):
                continue
            bad_epochs.append(epoch)
            bad_values.append(value)
            acc = value_at(top1, epoch)
            # Overfitting explains it only when the model fits its training data well (loss far
            # below chance) and still beats chance on validation: over-confident mistakes.
            explained = explained and t < 0.5 * chance and acc is not None and acc > acc_limit
        if len(bad_epochs) >= VAL_CHANCE_MIN_EPOCHS:
            status = "warn" if explained else "fail"
            what = ("while validation accuracy is above chance: the model is over-confident on its errors (overfitting)"
                    if explained else "which training has not fitted well enough to explain by overfitting: validation "
                    "sees a different label mapping, a stale or broken model copy, or its loss is computed wrongly")
            out.append(CheckResult(
                "val_above_chance", status,
                f"validation loss above chance ln C = {chance:.4g} at epoch(s) {fmt(bad_epochs)} while training loss is below it, {what}",
                "val.loss", source.name, bad_epochs, bad_values, details={"chance_loss": chance}))
    return out or passed("val_above_chance", f"validation loss stays below chance (ln C = {chance:.4g}) once training learns")


def check_no_learning(run: RunData) -> list[CheckResult]:
    loss = trusted(run, "train.loss")
    if loss is None or len(loss) < MIN_EPOCHS_NO_LEARNING:
        return skipped("no_learning", f"needs {MIN_EPOCHS_NO_LEARNING} epochs of training loss")
    first, last = float(loss.values[0]), float(loss.values[-1])
    if last < first * (1 - 0.01):
        return passed("no_learning", f"training loss fell from {first:.4g} to {last:.4g}")
    acc = trusted(run, "train.top1")
    if acc is not None and len(acc) >= 2 and float(acc.values[-1]) - float(acc.values[0]) >= 1.0:
        return passed("no_learning", "training accuracy rises although the loss is flat")
    chance = chance_loss(run)
    stuck = chance is not None and float(np.min(loss.values)) >= 0.98 * chance
    return [CheckResult(
        "no_learning", "fail" if stuck else "warn",
        f"training loss did not fall over {len(loss)} epochs ({first:.4g} -> {last:.4g})"
        + (f", stuck at chance ln C = {chance:.4g}" if stuck else "")
        + ": check the learning rate, that gradients reach the parameters and that labels match inputs",
        "train.loss", loss.source, loss.epochs.tolist(), loss.values.tolist())]


def check_accuracy_range(run: RunData) -> list[CheckResult]:
    out = []
    seen = False
    for source, series in each_series(run, ACCURACY_METRICS):
        seen = True
        v = series.values
        bad = np.isfinite(v) & ((v < -1e-9) | (v > 100 + 1e-6 + series.resolution))
        if bad.any():
            out.append(CheckResult(
                "accuracy_range", "fail", "accuracy outside [0, 100]%: counted more correct than samples, or a unit mix-up",
                series.name, source.name, series.epochs[bad].tolist(), v[bad].tolist()))
    for source in run.sources:
        for split in ("train", "val"):
            top1, top5 = source.series.get(f"{split}.top1"), source.series.get(f"{split}.top5")
            if top1 is None or top5 is None:
                continue
            five = top5.by_epoch()
            tol = 1e-6 + top1.resolution + top5.resolution
            bad = [(e, v, five[e]) for e, v in top1.by_epoch().items() if e in five and v > five[e] + tol]
            if bad:
                out.append(CheckResult(
                    "accuracy_range", "fail", "top-1 above top-5 accuracy: impossible, the two are counted differently",
                    f"{split}.top1", source.name, [b[0] for b in bad], [[b[1], b[2]] for b in bad]))
    if out:
        return out
    return passed("accuracy_range", "accuracies within [0, 100]% and top-1 <= top-5") if seen else \
        skipped("accuracy_range", "no accuracy recorded")


def check_accuracy_loss(run: RunData) -> list[CheckResult]:
    out = []
    considered = False
    chance = chance_loss(run)
    for source in run.sources:
        for split in ("train", "val"):
            loss, top1 = source.series.get(f"{split}.loss"), source.series.get(f"{split}.top1")
            if loss is None or top1 is None or all_zero(loss):
                continue
            lf, af = loss.finite(), top1.finite()
            if len(lf) >= 2 and len(af) >= 2:
                considered = True
                first, last = float(lf.values[0]), float(lf.values[-1])
                if last < 0.7 * first and float(np.ptp(af.values)) <= 2 * af.resolution + 1e-9:
                    out.append(CheckResult(
                        "accuracy_loss_mismatch", "fail",
                        f"{split} loss fell {first:.4g} -> {last:.4g} but accuracy stayed at {float(af.values[0]):.4g}%: "
                        "one of the two is not computed from the model's predictions",
                        f"{split}.top1", source.name, af.epochs.tolist(), af.values.tolist()))
            if chance is not None:
                considered = True
                l_by = loss.by_epoch()
                bad = [(e, a, l_by[e]) for e, a in top1.by_epoch().items()
                       if e in l_by and a >= 99.0 and l_by[e] >= 0.9 * chance]
                if bad:
                    out.append(CheckResult(
                        "accuracy_loss_mismatch", "fail",
                        f"{split} accuracy >= 99% while its loss is near chance (ln C = {chance:.4g}): contradictory",
                        f"{split}.top1", source.name, [b[0] for b in bad], [[b[1], b[2]] for b in bad]))
    if out:
        return out
    return passed("accuracy_loss_mismatch", "loss and accuracy tell the same story") if considered else \
        skipped("accuracy_loss_mismatch", "needs loss and accuracy of the same split over 2 epochs")


def check_cross_source(run: RunData) -> list[CheckResult]:
    exact = [s for s in run.sources if not s.approximate]
    if len(exact) < 2:
        return skipped("cross_source", "only one exact source" + (" (progress-bar logs hold running averages)"
                                                                     if len(run.sources) > len(exact) else ""))
    out = []
    compared = 0
    for a, b in combinations(exact, 2):
        for name in sorted(set(a.series) & set(b.series) - {"epoch_time"}):
            sa, sb = a.series[name], b.series[name]
            va, vb = sa.by_epoch(), sb.by_epoch()
            common = sorted(set(va) & set(vb))
            if not common:
                continue
            compared += 1
            bad = [e for e in common if disagree(va[e], vb[e], sa.resolution + sb.resolution)]
            if bad:
                out.append(CheckResult(
                    "cross_source", "fail",
                    f"{a.name} and {b.name} disagree on {name} at {len(bad)} of {len(common)} epoch(s) "
                    f"(e.g. epoch {bad[0]}: {va[bad[0]]:.6g} vs {vb[bad[0]]:.6g}): one of them records the wrong value",
                    name, f"{a.name} vs {b.name}", bad, [[va[e], vb[e]] for e in bad],
                    details={"sources": [a.name, b.name]}))
    if out:
        return out
    if not compared:
        return skipped("cross_source", "no metric appears in two sources for the same epoch")
    return passed("cross_source", f"{compared} metric pair(s) agree across sources")


def disagree(x: float, y: float, resolution: float) -> bool:
    # Non-finite values are the nonfinite check's finding; here they agree with each other
    # (our log prints "null" for what history.json records as inf).
    if not math.isfinite(x) or not math.isfinite(y):
        return math.isfinite(x) != math.isfinite(y)
    return abs(x - y) > max(ABS_TOL, REL_TOL * max(abs(x), abs(y))) + resolution


def check_samples(run: RunData) -> list[CheckResult]:
    if not run.dataset_sizes:
        return skipped("sample_counts", "dataset sizes unknown")
    out = []
    seen = False
    for source, series in each_series(run, ("train.samples", "val.samples")):
        split = series.name.split(".")[0]
        size = run.dataset_sizes.get(split)
        if size is None:
            continue
        seen = True
        allowed = {float(size)}
        if split == "train" and run.batch_size:
            allowed.add(float(size // run.batch_size * run.batch_size))  # drop_last
        bad = [(int(e), float(v)) for e, v in zip(series.epochs, series.values)
               if math.isfinite(v) and v not in allowed]
        if bad:
            out.append(CheckResult(
                "sample_counts", "fail",
                f"{split} saw {bad[0][1]:g} samples but the {split} set has {size}: samples were "
                + ("dropped" if bad[0][1] < size else "counted twice (padding or duplicated batches)"),
                series.name, source.name, [b[0] for b in bad], [b[1] for b in bad], details={"dataset_size": size}))
    if out:
        return out
    return passed("sample_counts", "sample counts match the dataset sizes") if seen else \
        skipped("sample_counts", "no sample counts recorded")


def check_divergence(run: RunData) -> list[CheckResult]:
    """Overfitting is information about the model, not a bookkeeping error: warn at most."""
    train, val = trusted(run, "train.loss"), trusted(run, "val.loss")
    if train is None or val is None or len(val) < MIN_EPOCHS_DIVERGENCE:
        return skipped("train_val_divergence", f"needs {MIN_EPOCHS_DIVERGENCE} epochs of train and val loss")
    vals = val.by_epoch()
    epochs = sorted(vals)
    best = min(epochs, key=lambda e: vals[e])
    last = epochs[-1]
    t_best, t_last = value_at(train, best), value_at(train, last)
    rising = [e for e in epochs if e > best]
    if (len(rising) >= 2 and vals[last] > vals[best] * (1 + DIVERGENCE_RISE)
            and t_best is not None and t_last is not None and t_last < t_best):
        return [CheckResult(
            "train_val_divergence", "warn",
            f"validation loss rose from {vals[best]:.4g} (epoch {best}) to {vals[last]:.4g} while training loss kept "
            "falling: the model overfits; the best checkpoint is the one to keep",
            "val.loss", val.source, rising, [vals[e] for e in rising], details={"best_epoch": best})]
    return passed("train_val_divergence", "no sustained train/val divergence")


CHECKS: tuple[Check, ...] = (
    check_nonfinite, check_epochs, check_steps, check_dead, check_constant, check_init_loss,
    check_val_above_chance, check_no_learning, check_accuracy_range, check_accuracy_loss,
    check_cross_source, check_samples, check_divergence,
)
