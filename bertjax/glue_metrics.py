"""GLUE metrics, the GLUE score, submission files and results tables.

Metrics follow the leaderboard and are reported in percent (0-100): CoLA Matthews correlation;
SST-2, MNLI, QNLI, RTE, WNLI accuracy; MRPC and QQP F1 of the positive class (1) and accuracy;
STS-B Pearson and Spearman correlation. They come from scikit-learn and scipy. Degenerate inputs
(constant predictions or labels, a single example) score 0, never NaN, and raise no warning.

The results dict
----------------
A run's results are `{task: {metric_key: value}}` with values in percent, e.g.

    {"cola": {"matthews_corrcoef": 52.1},
     "sst2": {"accuracy": 93.5},
     "mrpc": {"f1": 88.9, "accuracy": 84.8},
     "stsb": {"pearson": 87.1, "spearman": 85.8},
     "qqp":  {"f1": 71.2, "accuracy": 89.2},
     "mnli": {"accuracy_m": 84.6, "accuracy_mm": 83.4},
     "qnli": {"accuracy": 90.5}, "rte": {"accuracy": 66.4}, "wnli": {"accuracy": 65.1}}

A task's metric keys are `TaskSpec.metric_keys`: its metric names, suffixed per eval split for
MNLI (`_m` matched, `_mm` mismatched). `compute_metrics(task, p, y, split=split)` returns exactly
those keys for one split, so a runner builds the dict with `results[task].update(...)` per eval
split. Other keys (a loss, say) may ride along; they are kept in the JSON and tables but ignored
by the scores.

Scores: `task_score` is the mean of a task's metric keys (MRPC: mean of F1 and accuracy; MNLI:
mean of matched and mismatched accuracy). `glue_score` is the mean of the task scores of the
scored tasks present in the results (the nine GLUE tasks; AX never counts). With all nine this is
the leaderboard's GLUE score; with a subset it is the mean over that subset (the Markdown table
says how many tasks it covers). Note that the BERT paper's "Average" column is a different number:
the plain mean of nine columns (MNLI-m and MNLI-mm separately, QQP and MRPC F1, STS-B Spearman)
without WNLI.

`results_json(results)` gives the layout of glue_results.json:
`{"tasks": {task: {metric_key: value}}, "average": glue_score}` (average None when no scored
task is present).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats
from sklearn import metrics as skm

from bertjax import storage
from data_pipelines.glue import TASKS, TaskSpec, get_task

Results = dict[str, dict[str, float]]


# ----------------------------------------------------------------------------------------------
# Metrics.


def _quiet(fn: Callable[[], float]) -> float:
    """fn() as a float, 0.0 for NaN/inf, with library warnings about degenerate input silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        value = float(fn())
    return value if math.isfinite(value) else 0.0


def _correlation(fn: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0  # undefined: no variation
    return _quiet(lambda: fn(predictions, labels).statistic)


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "matthews_corrcoef": lambda p, y: _quiet(lambda: skm.matthews_corrcoef(y, p)),
    "accuracy": lambda p, y: _quiet(lambda: skm.accuracy_score(y, p)),
    "f1": lambda p, y: _quiet(
        lambda: skm.f1_score(y, p, pos_label=1, average="binary", zero_division=0.0)
    ),
    "pearson": lambda p, y: _correlation(scipy.stats.pearsonr, p, y),
    "spearman": lambda p, y: _correlation(scipy.stats.spearmanr, p, y),
}


def _metric_suffix(spec: TaskSpec, split: str | None) -> str:
    if split is None:
        if len(spec.eval_splits) > 1:
            raise ValueError(
                f"{spec.name} has several eval splits {spec.eval_splits}; pass split= to name one"
            )
        return spec.split(spec.eval_splits[0]).metric_suffix if spec.eval_splits else ""
    return spec.split(split).metric_suffix


def _as_predictions(spec: TaskSpec, predictions: Any) -> np.ndarray:
    """Class ids [N] (from ids [N] or scores [N, C]) or regression values [N] (from [N], [N, 1])."""
    p = np.asarray(predictions)
    if spec.is_regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.ndim != 1:
            raise ValueError(f"{spec.name}: predictions must be [N] or [N, 1], got {p.shape}")
        return p.astype(np.float64)
    if p.ndim == 2:
        if p.shape[1] != spec.num_labels:
            raise ValueError(f"{spec.name}: scores must be [N, {spec.num_labels}], got {p.shape}")
        p = p.argmax(axis=-1)
    if p.ndim != 1:
        raise ValueError(f"{spec.name}: predictions must be [N] or [N, C], got {p.shape}")
    if p.size and (
        not np.all(np.equal(np.mod(p, 1), 0)) or p.min() < 0 or p.max() >= spec.num_labels
    ):
        raise ValueError(f"{spec.name}: class ids must be integers in [0, {spec.num_labels})")
    return p.astype(np.int64)


def compute_metrics(
    task: str, predictions: Any, labels: Any, *, split: str | None = None
) -> dict[str, float]:
    """The task's metrics in percent, keyed as in the results dict (see the module doc).

    predictions: class ids [N] or class scores [N, C] (argmax is taken); for STS-B scores [N] or
    [N, 1]. labels: class ids (or float scores) [N], all labelled. `split` picks the key suffix;
    it is required for MNLI (validation_matched -> accuracy_m, validation_mismatched ->
    accuracy_mm).
    """
    spec = get_task(task)
    suffix = _metric_suffix(spec, split)
    p = _as_predictions(spec, predictions)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"{spec.name}: {len(p)} predictions but labels of shape {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{spec.name}: no examples to score")
    if spec.is_regression:
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{spec.name}: labels contain nan (unlabelled examples)")
    else:
        if np.any(y < 0):
            raise ValueError(f"{spec.name}: labels contain -1 (unlabelled examples)")
        y = y.astype(np.int64)
    return {name + suffix: 100.0 * _METRICS[name](p, y) for name in spec.metrics}


# ----------------------------------------------------------------------------------------------
# Scores.


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """Mean of the task's metric keys (e.g. MNLI: accuracy_m and accuracy_mm); all must be there."""
    spec = get_task(task)
    missing = [k for k in spec.metric_keys if k not in metrics]
    if missing:
        raise ValueError(f"{spec.name}: results lack {missing} (have {sorted(metrics)})")
    return float(np.mean([float(metrics[k]) for k in spec.metric_keys]))


def _ordered(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Task names of `results` (validated) in TASKS order."""
    for t in results:
        if t not in TASKS:
            raise ValueError(f"unknown GLUE task {t!r} in results; known: {tuple(TASKS)}")
    return [t for t in TASKS if t in results]


def scored_tasks(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The tasks of `results` that count in the GLUE score, in TASKS order."""
    return [t for t in _ordered(results) if TASKS[t].scored]


def glue_score(results: Mapping[str, Mapping[str, float]]) -> float:
    """Mean task score over the scored tasks present (all nine: the leaderboard's GLUE score)."""
    tasks = scored_tasks(results)
    if not tasks:
        raise ValueError(f"no scored GLUE task in results (have {sorted(results)})")
    return float(np.mean([task_score(t, results[t]) for t in tasks]))


def results_json(results: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The glue_results.json object: `{"tasks": {task: {key: value}}, "average": glue_score}`.

    Tasks in TASKS order; the average covers the scored tasks present (None if there are none).
    """
    tasks = _ordered(results)
    return {
        "tasks": {t: {k: float(v) for k, v in results[t].items()} for t in tasks},
        "average": glue_score(results) if scored_tasks(results) else None,
    }


def median_over_seeds(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> Results:
    """Per task and metric key, the median over the runs that report it (mean of the middle two
    for an even count). Scores are then computed from these medians, not medians of scores."""
    if not runs:
        raise ValueError("median_over_seeds needs at least one results dict")
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for task, metrics in run.items():
            for key, v in metrics.items():
                values.setdefault(task, {}).setdefault(key, []).append(float(v))
    _ordered(values)  # validates the task names
    return {t: {k: float(np.median(vs)) for k, vs in values[t].items()} for t in _ordered(values)}


def results_markdown(results: Mapping[str, Mapping[str, float]], *, digits: int = 2) -> str:
    """A Markdown table: one row per task (its metrics and score), then the GLUE score row.

    A task lacking some of its metric keys shows "–" as its score, and then so does the GLUE
    score row (the table renders partial results; `glue_score` itself raises on them).
    """
    lines = ["| Task | Metrics | Score |", "|---|---|---:|"]
    scores: dict[str, float | None] = {}
    for t in _ordered(results):
        spec, metrics = TASKS[t], results[t]
        keys = [k for k in spec.metric_keys if k in metrics]
        keys += [k for k in metrics if k not in keys]
        shown = ", ".join(f"{k} {float(metrics[k]):.{digits}f}" for k in keys)
        complete = all(k in metrics for k in spec.metric_keys)
        scores[t] = task_score(t, metrics) if complete else None
        score = "–" if scores[t] is None else f"{scores[t]:.{digits}f}"
        name = spec.display_name if spec.scored else f"{spec.display_name} (not scored)"
        lines.append(f"| {name} | {shown} | {score} |")
    scored = scored_tasks(results)
    if scored:
        values = [scores[t] for t in scored]
        average = "–" if None in values else f"**{np.mean(values):.{digits}f}**"
        lines.append(f"| **GLUE score** ({len(scored)} of 9 tasks) | | {average} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Submission files.


def _prediction_strings(spec: TaskSpec, predictions: Any) -> list[str]:
    p = _as_predictions(spec, predictions)
    if spec.is_regression:
        return [f"{v:.3f}" for v in np.clip(p, 0.0, 5.0)]
    return [spec.label_names[i] for i in p]


def write_submission(
    task: str, split: str, indexes: Sequence[int], predictions: Any, out_dir: str
) -> str:
    """Write the GLUE-server file of a test split; return its path.

    Lines are `index<TAB>prediction` under the header `index\\tprediction`, sorted by index.
    Predictions (class ids [N], class scores [N, C], or STS-B scores [N]) are written as the
    task's label strings (MNLI and AX entailment/neutral/contradiction, QNLI and RTE
    entailment/not_entailment, 0/1 for CoLA, SST-2, MRPC, QQP and WNLI), STS-B as scores clipped
    to [0, 5] with 3 decimals. MNLI test_matched -> MNLI-m.tsv, test_mismatched -> MNLI-mm.tsv.
    The file is written under a temporary name and renamed when complete.
    """
    spec = get_task(task)
    sf = spec.split(split)
    if sf.submission is None:
        raise ValueError(
            f"{spec.name} {split} is not a test split; test splits: {spec.test_splits}"
        )
    idx = np.asarray(indexes)
    strings = _prediction_strings(spec, predictions)
    if idx.ndim != 1 or len(idx) != len(strings):
        raise ValueError(
            f"{spec.name}: {len(strings)} predictions but indexes of shape {idx.shape}"
        )
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{spec.name} {split}: duplicated indexes (padding not removed?)")
    order = np.argsort(idx, kind="stable")
    body = "".join(f"{int(idx[i])}\t{strings[i]}\n" for i in order)

    out_dir = os.fspath(out_dir)
    path = storage.join(out_dir, sf.submission)
    storage.write_text(path, "index\tprediction\n" + body)
    return path
