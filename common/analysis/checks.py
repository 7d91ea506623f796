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
                  sources=[s.describe() for s in run.sources], last_epoch=max(ends) if ends else None,
                  hints=run.hints.to_dict())


# --- helpers -----------------------------------------------------------------------------------


def strict(source: Source) -> bool:
    """Our own files (and constructed sources): a record missing or stopping there is a bug of
    ours. Foreign logs are often excerpts, evaluate every k epochs, or were cut by the user."""
    return source.format.startswith("teacher") or source.format == ""


def chance_acc(run: RunData) -> float | None:
    return 100.0 / run.num_classes if run.num_classes and run.num_classes >= 2 else None


def hint_words(run: RunData) -> str:
    """The user's/sidecars' hints that explain a look-alike, for messages."""
    h = run.hints
    said = [w for w, on in (("mixup/CutMix", h.mixup), ("EMA", h.ema), ("pretrained weights", h.pretrained),
                            (f"label smoothing {h.label_smoothing:g}" if h.label_smoothing else "", bool(h.label_smoothing)))
            if on]
    return f" (hints: {', '.join(said)})" if said else ""


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
        if missing and strict(source):
            out.append(CheckResult(
                "epochs_missing", "fail", f"epoch(s) {fmt(missing)} missing between {int(uniq[0])} and {int(uniq[-1])}",
                series.name, source.name, missing, []))
        elif missing and not (source.approximate or series.name.startswith("val.")):
            out.append(CheckResult(
                "epochs_missing", "warn",
                f"epoch(s) {fmt(missing)} missing between {int(uniq[0])} and {int(uniq[-1])}: likely innocent (an "
                "excerpt, lines filtered out, or evaluation on some epochs only)",
                series.name, source.name, missing, []))
        if uniq.size and uniq[0] > 1 and not missing and strict(source):
            stride = np.diff(uniq)
            if not (stride.size and np.all(stride == stride[0]) and uniq[0] == stride[0]):
                out.append(CheckResult(
                    "epochs_missing", "warn", f"starts at epoch {int(uniq[0])}, not 1 (resumed without the earlier history?)",
                    series.name, source.name, [int(uniq[0])], []))
    for source in run.sources:
        if source.restarts:
            first = source.restarts[0]
            out.append(CheckResult(
                "epochs_missing", "warn",
                f"the epoch counter restarts {len(source.restarts)} time(s) (first at row {first['row']}: epoch "
                f"{first['epoch']} again): likely appended sessions (Keras or fastai CSVLogger(append=True) over "
                "several fit() calls); later sessions are numbered on",
                None, source.name, [r["continues_as"] for r in source.restarts], [r["epoch"] for r in source.restarts],
                details={"restarts": source.restarts}))
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
            if all_zero(series) and series.resolution > 0 and series.name in LOSS_METRICS:
                out.append(CheckResult(
                    "dead_metric", "warn",
                    f"printed as 0 at every epoch (to {series.resolution * 2:g}): likely innocent, a loss below the "
                    "printed precision (rounding); an exactly-0 loss written as a number would be a failure",
                    series.name, source.name, series.epochs.tolist(), series.values.tolist()))
                continue
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
            stopped = int(series.epochs.max())
            out.append(CheckResult(
                "dead_metric", "fail" if strict(source) else "warn",
                f"last recorded at epoch {stopped} while the source goes on to epoch {last}"
                + ("" if strict(source) else ": likely innocent in another tool's log (evaluation every k epochs, "
                                             "an excerpt, a post-fit validate/test row)"),
                series.name, source.name, [stopped], [float(series.values[-1])]))
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
    if loss is not None and chance is not None and len(loss) >= 3 and len(series) >= 3:
        low = float(np.min(loss.values))
        if low < 0.9 * chance:
            epoch = int(loss.epochs[int(np.argmin(loss.values))])
            return f"{split} loss went down to {low:.4g} at epoch {epoch}, better than chance (ln C = {chance:.4g})"
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
        if finite.resolution > 0:
            out.append(CheckResult(
                "constant_series", "warn",
                f"{series.name} is {value:.6g} at every epoch as printed: likely innocent, a plateau (e.g. a model "
                "predicting the majority class of an imbalanced task) hidden by the printed decimals; worth a look if "
                "it should still be learning",
                series.name, source.name, finite.epochs.tolist(), finite.values.tolist()))
        elif series.name == "train.loss":
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
    """Validation loss above ln C while training has learned. Miscalibration (a weak or
    overfitted model, common with few classes) explains it whenever validation accuracy beats
    chance, and so does a validation that recovers later (EMA warm-up): warn. Fail only when the
    model fits its training data well (train loss < ½ ln C) and validation accuracy stays at or
    below chance to the end, at 2+ epochs: validation then sees another label mapping or model."""
    chance = chance_loss(run)
    if chance is None:
        return skipped("val_above_chance", "number of classes unknown (pass --num-classes)")
    train = trusted(run, "train.loss")
    if train is None:
        return skipped("val_above_chance", "no training loss")
    out = []
    floor = 100.0 / run.num_classes
    at_chance = min(1.1 * floor, floor + (100 - floor) * 0.05)  # 52.5% for 2 classes
    for source, val in each_series(run, ("val.loss",)):
        if all_zero(val):
            continue
        top1 = source.series.get("val.top1") or trusted(run, "val.top1")
        bad_epochs, bad_values, broken = [], [], []
        for epoch, value in val.finite().by_epoch().items():
            t = value_at(train, epoch)
            # Margins keep a noisy first epoch of a small-C run (ln 2 = 0.69) from firing.
            if t is None or not (value > chance * VAL_CHANCE_MARGIN and t < TRAIN_LEARNED * chance):
                continue
            bad_epochs.append(epoch)
            bad_values.append(value)
            acc = value_at(top1, epoch)
            if t < 0.5 * chance and acc is not None and acc <= at_chance:
                broken.append(epoch)
        if len(bad_epochs) < VAL_CHANCE_MIN_EPOCHS:
            continue
        recovered = top1 is not None and len(top1) and float(top1.values[-1]) > at_chance and broken and \
            int(top1.epochs[-1]) > max(broken)
        if len(broken) >= VAL_CHANCE_MIN_EPOCHS and not recovered:
            out.append(CheckResult(
                "val_above_chance", "fail",
                f"validation loss above chance ln C = {chance:.4g} at epoch(s) {fmt(broken)} with validation accuracy at "
                f"chance ({100.0 / run.num_classes:.3g}%) while training loss is below ½ ln C: validation sees a "
                "different label mapping, a stale or broken model copy, or its loss is computed wrongly",
                "val.loss", source.name, broken, [val.by_epoch()[e] for e in broken], details={"chance_loss": chance}))
        else:
            out.append(CheckResult(
                "val_above_chance", "warn",
                f"validation loss above chance ln C = {chance:.4g} at epoch(s) {fmt(bad_epochs)} while training loss is "
                "below it: likely innocent, over-confident mistakes of an overfitted or weak model (miscalibration, "
                "common with few classes), or validation recovering later (EMA weights warming up)",
                "val.loss", source.name, bad_epochs, bad_values, details={"chance_loss": chance}))
    return out or passed("val_above_chance", f"validation loss stays below chance (ln C = {chance:.4g}) once training learns")


def check_no_learning(run: RunData) -> list[CheckResult]:
    loss = trusted(run, "train.loss")
    if loss is None or len(loss) < MIN_EPOCHS_NO_LEARNING:
        return skipped("no_learning", f"needs {MIN_EPOCHS_NO_LEARNING} epochs of training loss")
    first, last = float(loss.values[0]), float(loss.values[-1])
    if last < first * (1 - 0.01):
        return passed("no_learning", f"training loss fell from {first:.4g} to {last:.4g}")
    fell = session_that_learned(run, loss)
    if fell is not None:
        return passed("no_learning", f"training loss fell within an appended session ({fell[0]:.4g} to {fell[1]:.4g}); "
                                     "a later session starts again higher")
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


def session_that_learned(run: RunData, loss: EpochSeries) -> tuple[float, float] | None:
    """(first, last) loss of an appended session (a restarted epoch counter) whose loss fell:
    a later fit() of a fresh model starts high again, so first-to-last over the whole file
    says nothing about learning."""
    source = next((s for s in run.sources if s.name == loss.source), None)
    if source is None or not source.restarts:
        return None
    starts = [int(loss.epochs[0])] + [int(r["continues_as"]) for r in source.restarts] + [int(loss.epochs[-1]) + 1]
    for start, end in zip(starts, starts[1:]):
        inside = loss.values[(loss.epochs >= start) & (loss.epochs < end)]
        if len(inside) >= 2 and float(inside[-1]) < float(inside[0]) * (1 - 0.01):
            return float(inside[0]), float(inside[-1])
    return None


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
    if run.num_classes is not None and run.num_classes <= 5:
        for source, series in each_series(run, ("train.top5", "val.top5")):
            v = series.values
            bad = np.isfinite(v) & (v < 100 - 1e-6 - series.resolution)
            if bad.any():
                out.append(CheckResult(
                    "accuracy_range", "fail",
                    f"top-5 accuracy below 100% with {run.num_classes} classes: the true class is always among the top 5, "
                    "so top-k is counted against the wrong labels or head",
                    series.name, source.name, series.epochs[bad].tolist(), v[bad].tolist()))
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
        if a.session != b.session or same_writer(a, b):
            continue  # Lightning version_N folders, two files of one logger: separate sessions/runs
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


def same_writer(a: Source, b: Source) -> bool:
    """Two files of one foreign format (two metrics.csv, two results.csv) are two runs or two
    sessions of the same logger, not two records of one run: a logger writes each run once.
    Cross-checking is for different writers of one run (our history, log, steps, TensorBoard),
    and for uploads, which lose the version_N folder that would say so."""
    return a.kind == b.kind and a.kind in ("csv", "log") and bool(a.format) and a.format == b.format


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


# Cross-entropy of a misclassified sample is at least ln 2 (its true class has p <= 1/2), so a
# mean loss L bounds the error rate: error <= L / ln 2. Focal loss (gamma 2) or class weights
# down to 1/4 lower that floor by at most 4x: beyond that no cross-entropy-like loss explains it.
LOSS_FLOOR = math.log(2)
LOOSE_FLOOR = math.log(2) / 4


def check_loss_accuracy_bound(run: RunData) -> list[CheckResult]:
    out = []
    considered = False
    for source in run.sources:
        for split in ("train", "val"):
            loss, top1 = source.series.get(f"{split}.loss"), source.series.get(f"{split}.top1")
            if loss is None or top1 is None or all_zero(loss):
                continue
            considered = True
            acc_by = top1.by_epoch()
            tight, loose = [], []
            for epoch, value in loss.by_epoch().items():
                acc = acc_by.get(epoch)
                if acc is None or not math.isfinite(value) or not math.isfinite(acc):
                    continue
                worst_error = 100.0 - acc - top1.resolution
                high = value + loss.resolution
                if worst_error > 100.0 * high / LOOSE_FLOOR + 1e-9:
                    loose.append((epoch, value, acc))
                elif worst_error > 100.0 * high / LOSS_FLOOR + 1e-9:
                    tight.append((epoch, value, acc))
            if loose:
                e, v, a = loose[0]
                status = "warn" if source.approximate and len(loose) < 2 else "fail"
                out.append(CheckResult(
                    "loss_accuracy_bound", status,
                    f"{split} loss {v:.4g} with {split} accuracy {a:.4g}% at epoch {e} ({len(loose)} epoch(s)): "
                    f"impossible for a cross-entropy, where each misclassified sample costs at least ln 2, so a loss of "
                    f"{v:.4g} allows at most {min(100.0, 100 * v / LOSS_FLOOR):.3g}% errors (even focal loss or class "
                    "weights at most 4x that): the accuracy (or the loss) is not computed from the same predictions",
                    f"{split}.top1", source.name, [x[0] for x in loose], [[x[2], x[1]] for x in loose]))
            elif tight:
                e, v, a = tight[0]
                out.append(CheckResult(
                    "loss_accuracy_bound", "warn",
                    f"{split} loss {v:.4g} is low for an accuracy of {a:.4g}% at epoch {e}: possible only if the loss "
                    "is not plain cross-entropy (focal loss, class weights, a loss scaled down)",
                    f"{split}.top1", source.name, [x[0] for x in tight], [[x[2], x[1]] for x in tight]))
    if out:
        return out
    return passed("loss_accuracy_bound", "loss and accuracy are compatible (error rate <= loss / ln 2)") if considered \
        else skipped("loss_accuracy_bound", "needs loss and top-1 accuracy of the same split")


def check_zero_step_loss(run: RunData) -> list[CheckResult]:
    """A per-iteration loss printed as an exact 0 in scientific notation (0.0000e+00) is not a
    rounding: every sample of the batch had probability 1 in float32 for its label."""
    out = []
    for source in run.sources:
        if len(source.exact_zero_steps) >= 2:
            out.append(CheckResult(
                "zero_loss", "fail",
                f"training loss exactly 0 (printed 0.0000e+00) at {len(source.exact_zero_steps)} iteration(s), first at "
                f"step {source.exact_zero_steps[0]}: every sample predicted with probability 1, which real data does not "
                "give; the labels are degenerate (e.g. one class only: a wrongly laid-out data folder) or the loss is not "
                "computed on the model's output",
                "step.train_loss", source.name, [], [0.0] * min(len(source.exact_zero_steps), 50),
                details={"steps": source.exact_zero_steps[:50]}))
    return out or passed("zero_loss", "no exact-zero iteration loss")


def check_frozen_accuracy(run: RunData) -> list[CheckResult]:
    """Every accuracy of the run identical at every epoch while the training loss swings: the
    accuracies are not computed from this model's predictions, or it collapsed to one class."""
    # Exactly 0% is dead_metric's; exactly 100% (top-5 with few classes) is saturated, not frozen.
    accs = [(src, s) for src, s in each_series(run, ACCURACY_METRICS)
            if not all_zero(s) and not np.all(s.finite().values >= 100 - 1e-6 - s.resolution)]
    loss = trusted(run, "train.loss")
    if not accs or loss is None or len(loss) < 5:
        return frozen_val_within_epoch(run) or skipped("frozen_accuracy", "needs 5 epochs of training loss and an accuracy")
    frozen = [s for _, s in accs if len(s.finite()) >= 5 and np.ptp(s.finite().values) <= 2 * s.resolution + 1e-9]
    swing = float(np.ptp(loss.values)) / max(abs(float(np.mean(loss.values))), 1e-12)
    if len(frozen) == len(accs) and swing >= 0.2:
        first = frozen[0]
        return [CheckResult(
            "frozen_accuracy", "fail",
            f"every accuracy ({', '.join(s.name for s in frozen)}) is exactly {float(first.values[0]):.4g}% at every "
            f"epoch while the training loss moves by {100 * swing:.0f}% ({float(np.min(loss.values)):.4g} to "
            f"{float(np.max(loss.values)):.4g}): the model collapsed to one prediction, or the accuracy is not "
            "computed from it",
            first.name, first.source, first.epochs.tolist(), first.values.tolist())]
    return (frozen_val_across_epochs(run) + frozen_val_within_epoch(run)
            or passed("frozen_accuracy", "accuracies move with the loss"))


# How many identical evaluations make a frozen validation accuracy worth naming.
_FROZEN_EVALS = 5
_FROZEN_EXPLANATION = (
    "the evaluated predictions never change: the model collapsed to one class (often the majority class, "
    "a real failure of training), or the evaluation reads a stale copy of the model or a stale variable; "
    "a warning, not a failure, because a collapsed model does produce these numbers")


def is_frozen(values: np.ndarray, resolution: float) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size >= _FROZEN_EVALS and float(np.ptp(finite)) <= 2 * resolution + 1e-12 * max(1.0, float(np.max(np.abs(finite))))


def frozen_val_across_epochs(run: RunData) -> list[CheckResult]:
    """A validation accuracy identical at >= 5 epochs while the same source's validation loss
    moves (the accuracy is counted from predictions whose loss changes)."""
    out = []
    for source in ordered_sources(run):
        loss = source.series.get("val.loss")
        if loss is None or len(loss.finite()) < _FROZEN_EVALS or is_frozen(loss.finite().values, loss.resolution):
            continue
        for name in ("val.top1", "val.top5"):
            acc = source.series.get(name)
            if acc is None or all_zero(acc) or not is_frozen(acc.values, acc.resolution):
                continue
            value = float(acc.finite().values[0])
            if value >= 100 - 1e-6 - acc.resolution:
                continue  # saturated (top-5 with few classes), not frozen
            printed = " as printed" if acc.resolution > 1e-6 else " to every printed digit"
            out.append(CheckResult(
                "frozen_accuracy", "warn",
                f"{name} is {value:.10g}%{printed} at all {len(acc.finite())} epochs while the validation loss moves "
                f"({float(np.min(loss.values)):.4g} to {float(np.max(loss.values)):.4g}): {_FROZEN_EXPLANATION}",
                name, source.name, acc.epochs.tolist(), acc.values.tolist()))
    return out


def frozen_val_within_epoch(run: RunData) -> list[CheckResult]:
    """Evaluations every N steps: the validation accuracy printed >= 5 times inside one epoch,
    always the same, while the training loss printed beside it moves by >= 10 %."""
    out = []
    for source in ordered_sources(run):
        train = source.within_epoch.get("train.loss", {})
        acc_series = source.series.get("val.top1")
        for epoch, values in sorted(source.within_epoch.get("val.top1", {}).items()):
            acc = np.asarray(values, dtype=np.float64)
            loss = np.asarray(train.get(epoch, []), dtype=np.float64)
            loss = loss[np.isfinite(loss)]
            if acc_series is None or not is_frozen(acc, acc_series.resolution / max(_unit_scale(source), 1.0)) \
                    or loss.size < 2 or float(acc[0]) == 0:
                continue
            swing = float(np.ptp(loss)) / max(abs(float(np.mean(loss))), 1e-12)
            if swing < 0.1 or float(acc[0]) * _unit_scale(source) >= 100 - 1e-6:
                continue
            out.append(CheckResult(
                "frozen_accuracy", "warn",
                f"val.top1 is {float(acc[0]) * _unit_scale(source):.4g}% at every one of its {acc.size} evaluations "
                f"inside epoch {epoch} while the training loss printed beside it moves "
                f"({float(np.min(loss)):.4g} to {float(np.max(loss)):.4g}): {_FROZEN_EXPLANATION}",
                "val.top1", source.name, [epoch] * acc.size, (acc * _unit_scale(source)).tolist(),
                details={"epoch": epoch, "evaluations": acc.size}))
            break  # one epoch is the evidence; the next ones would repeat it
    return out


def _unit_scale(source: Source) -> float:
    """within_epoch keeps values as printed; a fraction source's accuracies were x100 since."""
    return 100.0 if source.accuracy_unit == "fraction" else 1.0


# --- innocent look-alikes: warn at most, naming the likely explanation ------------------------


def check_lookalikes(run: RunData) -> list[CheckResult]:
    out: list[CheckResult] = []
    out += topk_saturated(run)
    out += train_loss_above_val(run)
    out += train_acc_below_val(run)
    out += val_near_chance(run)
    out += low_first_loss(run)
    out += generalisation_gap(run)
    out += val_quantised(run)
    return out or passed("lookalikes", "no innocent look-alike to explain")


def topk_saturated(run: RunData) -> list[CheckResult]:
    out = []
    for source, series in each_series(run, ("train.top5", "val.top5")):
        finite = series.finite()
        if len(finite) and np.all(finite.values >= 100 - 1e-6 - finite.resolution):
            if run.num_classes is not None and run.num_classes <= 5:
                continue  # certain with C <= 5
            out.append(CheckResult(
                "topk_saturated", "warn",
                f"{series.name} is 100% at every epoch: expected when there are at most 5 classes (top-5 then always "
                "holds the true class); otherwise top-k is counted wrongly. Pass --num-classes to settle it",
                series.name, source.name, finite.epochs.tolist(), finite.values.tolist()))
    return out


def train_loss_above_val(run: RunData) -> list[CheckResult]:
    train, val = trusted(run, "train.loss"), trusted(run, "val.loss")
    if train is None or val is None:
        return []
    t, v = train.by_epoch(), latest_by_epoch(val, train)
    common = [e for e in sorted(set(t) & set(v)) if v[e] > 0]
    high = [e for e in common if t[e] > 1.5 * v[e]]
    if common and len(high) * 2 >= len(common):
        e = high[0]
        return [CheckResult(
            "train_loss_above_val", "warn",
            f"training loss well above validation loss ({t[e]:.4g} vs {v[e]:.4g} at epoch {e}, {len(high)} of "
            f"{len(common)} epochs): likely innocent, mixup/CutMix or label smoothing make the training loss a "
            f"mixed-target loss, and dropout or a regulariser counted in the loss raise it{hint_words(run)}",
            "train.loss", train.source, high, [[t[x], v[x]] for x in high])]
    return []


def latest_by_epoch(sparse: EpochSeries, dense: EpochSeries) -> dict[int, float]:
    """``sparse`` at each epoch of ``dense``: its last value at or before it (evaluation every k
    epochs, or an evaluation printed before training resumed)."""
    values = sparse.by_epoch()
    known = sorted(values)
    out = {}
    for epoch in map(int, dense.epochs):
        before = [e for e in known if e <= epoch]
        if before:
            out[epoch] = values[before[-1]]
    return out


def generalisation_gap(run: RunData) -> list[CheckResult]:
    """Validation accuracy far below what the training loss implies for training accuracy
    (train error <= loss / ln 2), or far below the training accuracy itself: overfitting, or a
    validation set from another distribution. Information about the model, never a failure."""
    loss, val = trusted(run, "train.loss"), trusted(run, "val.top1")
    train_acc = trusted(run, "train.top1")
    if val is None or (loss is None and train_acc is None):
        return []
    epoch = int(val.epochs[-1])
    v = float(val.values[-1])
    implied = None
    if loss is not None and epoch in loss.by_epoch():
        implied = 100.0 * (1 - loss.by_epoch()[epoch] / LOSS_FLOOR)
    measured = train_acc.by_epoch().get(epoch) if train_acc is not None else None
    if measured is not None and not 0 <= measured <= 100:
        measured = None  # out of range: accuracy_range's finding, not a gap
    floor = max(x for x in (implied, measured, -1.0) if x is not None)
    if floor - v < 15.0:
        return []
    what = (f"training accuracy {measured:.4g}%" if measured is not None and floor == measured else
            f"a training loss of {loss.by_epoch()[epoch]:.4g}, which implies a training accuracy of at least {floor:.3g}%")
    return [CheckResult(
        "generalisation_gap", "warn",
        f"validation accuracy {v:.4g}% at epoch {epoch} against {what}: likely innocent, the model overfits a small "
        "training set, or validation comes from another domain; keep the best checkpoint",
        "val.top1", val.source, [epoch], [v])]


def val_quantised(run: RunData) -> list[CheckResult]:
    """Validation accuracy swinging up and down by several points between epochs: a small
    validation set (one sample moves it by 100/N points: N is named when every value is a
    multiple of 100/N) or a high learning rate. Noise, not a finding."""
    val = trusted(run, "val.top1")
    if val is None or len(val) < 4:
        return []
    diffs = np.diff(val.values)
    big = diffs[np.abs(diffs) >= 3.0]
    reversals = int(np.sum(np.sign(big[1:]) != np.sign(big[:-1]))) if big.size > 1 else 0
    if reversals < 2:
        return []
    size = None if "val" in run.dataset_sizes else quantum(val)
    return [CheckResult(
        "val_quantised", "warn",
        f"validation accuracy swings by up to {float(np.max(np.abs(diffs))):.3g} points between epochs "
        f"({reversals} reversals): likely innocent, "
        + (f"a validation set of about {size} samples (every value is a multiple of 100/{size}%), where each sample "
           "moves accuracy by that much" if size else "a small validation set or a high learning rate")
        + "; read the trend, not single epochs",
        "val.top1", val.source, val.epochs.tolist(), val.values.tolist(), details={"val_size": size})]


def quantum(val: EpochSeries) -> int | None:
    values = np.unique(val.values)
    if values.size < 3 or np.all(np.abs(values - np.round(values)) < 1e-9):
        return None
    for n in range(10, 2001):
        counts = values * n / 100.0
        tol = max(val.resolution, 1e-5) * n / 100.0 + 1e-6  # JSON writers round to ~5 decimals
        if np.all(np.abs(counts - np.round(counts)) <= tol):
            return n
    return None


def train_acc_below_val(run: RunData) -> list[CheckResult]:
    train, val = trusted(run, "train.top1"), trusted(run, "val.top1")
    if train is None or val is None:
        return []
    t, v = train.by_epoch(), val.by_epoch()
    low = [e for e in sorted(set(t) & set(v)) if t[e] < v[e] - 5.0]
    if low and len(low) * 2 >= len(set(t) & set(v)):
        e = low[0]
        return [CheckResult(
            "train_acc_below_val", "warn",
            f"training accuracy below validation accuracy ({t[e]:.4g}% vs {v[e]:.4g}% at epoch {e}): likely innocent, "
            f"training sees augmented or mixed inputs and dropout, validation does not{hint_words(run)}",
            "train.top1", train.source, low, [[t[x], v[x]] for x in low])]
    return []


def val_near_chance(run: RunData) -> list[CheckResult]:
    floor = chance_acc(run)
    val = trusted(run, "val.top1")
    if floor is None or val is None:
        return []
    limit = min(2 * floor, floor + (100 - floor) / 10)  # 55% for 2 classes, 19% for 10, ~10% for 1000
    near = [(int(e), float(a)) for e, a in zip(val.epochs, val.values) if a < limit]
    if not near:
        return []
    recovered = float(val.values[-1]) >= limit
    return [CheckResult(
        "val_near_chance", "warn",
        f"validation accuracy near chance ({100 / run.num_classes:.3g}% for {run.num_classes} classes) at "
        f"{len(near)} epoch(s), e.g. {near[0][1]:.4g}% at epoch {near[0][0]}"
        + (" and recovers later" if recovered else "")
        + f": likely innocent early in training, with EMA weights still warming up, or in a smoke test of a few "
          f"steps{hint_words(run)}",
        "val.top1", val.source, [n[0] for n in near], [n[1] for n in near])]


def low_first_loss(run: RunData) -> list[CheckResult]:
    chance = chance_loss(run)
    loss = trusted(run, "train.loss")
    if chance is None or loss is None or int(loss.epochs[0]) != 1:
        return []
    first = float(loss.values[0])
    if first >= 0.5 * chance:
        return []
    return [CheckResult(
        "low_first_loss", "warn",
        f"epoch-1 training loss {first:.4g} is far below chance ln C = {chance:.4g}: likely innocent, a fine-tune from "
        f"pretrained weights starts there{hint_words(run)}; from scratch it would mean the task leaks its labels",
        "train.loss", loss.source, [1], [first])]


CHECKS: tuple[Check, ...] = (
    check_nonfinite, check_epochs, check_steps, check_dead, check_constant, check_init_loss,
    check_val_above_chance, check_no_learning, check_accuracy_range, check_accuracy_loss,
    check_cross_source, check_samples, check_divergence, check_loss_accuracy_bound, check_zero_step_loss,
    check_frozen_accuracy, check_lookalikes,
)
