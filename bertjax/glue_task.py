"""A GLUE task on the fine-tuning engine: the sequence-classification family of finetune.py.

`bertjax finetune --config experiments/glue/mrpc.py` runs `finetune.finetune` (the one engine:
resume, batching, evaluate-only) with `GlueTask`; this module holds what is GLUE's own: the
config (`GlueConfig`), reading and featurizing the splits (data_pipelines/glue.py, local files
or TFDS), the dev metrics and score (bertjax/glue_metrics.py) and the test predictions. A run
writes what every fine-tuning run writes (finetune.py) plus

    WORKDIR/submission/<GLUE server file>.tsv   the test predictions made with the best
                                                parameters (MNLI: MNLI-m, MNLI-mm and AX)

The suite of every task, seeds and learning rates is glue.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bertjax import glue_metrics, sharding, storage
from bertjax.config import ModelConfig, from_group
from bertjax.finetune_task import (
    DataConfig,
    Evaluation,
    ModelOverrides,
    Predict,
    SequenceObjective,
    Split,
    TaskFamily,
    TrainLoopConfig,
    resolve_common,
)
from bertjax.model import BertForSequenceClassification
from bertjax.optim import OptimConfig
from data_pipelines import glue as glue_data
from data_pipelines.features import EXAMPLE_INDEX, LABEL

log = logging.getLogger(__name__)

SUBMISSION_DIR = "submission"


@dataclasses.dataclass(frozen=True)
class GlueTaskConfig:
    """Which GLUE task and how its examples are read (see experiments/glue/common.py)."""

    name: str = ""  # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
    data_dir: str = ""  # GLUE root (CoLA/, SST-2/, ..., diagnostic/) or 'tfds'
    tfds_data_dir: str = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    max_train_examples: int = 0  # train on the first N examples only (0 = all)
    max_eval_examples: int = 0  # evaluate on the first N dev examples only (0 = all)
    max_seq_length: int = 128  # tokens per example ([CLS] a [SEP] b [SEP], truncated)

    def __post_init__(self):
        if not self.name:
            raise ValueError("config.task.name is required (e.g. mrpc)")
        spec = glue_data.get_task(self.name)  # ValueError naming the task when unknown
        if spec.train_split is None:
            raise ValueError(
                f"config.task.name={self.name!r}: {spec.display_name} has no training data; it "
                f"is predicted with the {spec.predict_with} model (its run writes "
                f"{', '.join(spec.submission_files)})"
            )
        if not self.data_dir:
            raise ValueError("config.task.data_dir is required: a GLUE data directory or 'tfds'")
        if self.max_seq_length < 3:
            raise ValueError(f"config.task.max_seq_length={self.max_seq_length}: must be >= 3")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 0")

    @property
    def spec(self) -> glue_data.TaskSpec:
        return glue_data.get_task(self.name)


@dataclasses.dataclass(frozen=True)
class GlueTrainConfig(TrainLoopConfig):
    """The loop (`TrainLoopConfig`) plus GLUE's test predictions."""

    predict_test: bool = True  # predict the test splits with the best params (submission)


@dataclasses.dataclass(frozen=True)
class GlueConfig:
    """The resolved GLUE fine-tuning experiment: what library code receives."""

    task: GlueTaskConfig
    model: ModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: GlueTrainConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str
    data: DataConfig = DataConfig()

    @classmethod
    def from_config_dict(cls, config: Any) -> GlueConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        common = resolve_common(config, groups=("task",), train_cls=GlueTrainConfig)
        return cls(task=from_group(GlueTaskConfig, config.task, "config.task"), **common)

    @property
    def num_segments(self) -> int:
        return 2 if self.task.spec.is_pair else 1

    def optim_for(self, num_steps: int) -> OptimConfig:
        return dataclasses.replace(
            self.optim, warmup_steps=int(round(self.warmup_fraction * num_steps))
        )


def read_examples(cfg: GlueTaskConfig, task: str, split: str) -> list[glue_data.Example]:
    """One split from the local GLUE files or from TFDS (`data_dir='tfds'`)."""
    if cfg.data_dir == "tfds":
        return glue_data.load_tfds_split(task, split, data_dir=cfg.tfds_data_dir or None)
    return glue_data.read_split(task, cfg.data_dir, split)


def has_split(cfg: GlueTaskConfig, task: str, split: str) -> bool:
    """Whether a split can be read: always with TFDS, locally when its file exists."""
    if cfg.data_dir == "tfds":
        return True
    return storage.isfile(glue_data.task_file(task, cfg.data_dir, split))


def prediction_splits(cfg: GlueTaskConfig) -> list[tuple[str, str]]:
    """(task, split) of every test split the run predicts: the task's own, plus those of tasks
    predicted with its model (MNLI: AX), when their data exist."""
    spec = cfg.spec
    tasks = [spec] + [
        t for t in glue_data.TASKS.values() if t.predict_with == spec.name and t.name != spec.name
    ]
    return [(t.name, s) for t in tasks for s in t.test_splits if has_split(cfg, t.name, s)]


def load_data(
    cfg: GlueTaskConfig, tokenizer: Any, *, with_test: bool = True, with_train: bool = True
) -> tuple[Split | None, list[Split], list[Split]]:
    """(train split or None, eval splits, test splits), featurized to cfg.max_seq_length: the
    arrays of `glue_data.featurize` (input_ids, input_mask, segment_ids [N, T], label [N],
    example_index [N]). Raises FileNotFoundError / glue_data.GlueDataError / ValueError (a
    split without examples, test splits excepted)."""
    spec = cfg.spec

    def featurize(task: str, split: str, limit: int) -> Split | None:
        examples = read_examples(cfg, task, split)
        if limit:
            examples = examples[:limit]
        if not examples:
            if split in glue_data.get_task(task).test_splits:
                log.warning("%s %s: no examples; nothing to predict", task, split)
                return None
            raise ValueError(f"{task} {split}: no examples (data_dir={cfg.data_dir})")
        feats = glue_data.featurize(
            examples,
            tokenizer,
            cfg.max_seq_length,
            regression=glue_data.get_task(task).is_regression,
        )
        return Split(split, feats, task=task)

    train = featurize(spec.name, "train", cfg.max_train_examples) if with_train else None
    evals = [featurize(spec.name, s, cfg.max_eval_examples) for s in spec.eval_splits]
    tests = [featurize(t, s, 0) for t, s in prediction_splits(cfg)] if with_test else []
    return train, evals, [t for t in tests if t is not None]  # type: ignore[return-value]


def eval_loss(logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """Mean cross-entropy (or squared error for regression) over a split."""
    logits = logits.astype(np.float64)
    if regression:
        return float(np.mean((logits[:, 0] - labels) ** 2))
    top = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def score_splits(
    task: str, split_logits: dict[str, np.ndarray], evals: Sequence[Split]
) -> tuple[dict[str, float], dict[str, float]]:
    """(GLUE metrics in percent over all eval splits, eval losses keyed loss<suffix>)."""
    spec = glue_data.get_task(task)
    metrics: dict[str, float] = {}
    loss_values: dict[str, float] = {}
    for data in evals:
        logits, labels = split_logits[data.name], data.arrays[LABEL]
        preds = logits[:, 0] if spec.is_regression else logits
        metrics.update(glue_metrics.compute_metrics(task, preds, labels, split=data.name))
        suffix = spec.split(data.name).metric_suffix
        loss_values["loss" + suffix] = eval_loss(logits, labels, spec.is_regression)
    return metrics, loss_values


def task_metadata(spec: glue_data.TaskSpec) -> dict[str, Any]:
    """The `task` recorded in WORKDIR/best/bertjax_config.json (`checkpoint.check_task`): the
    task's name, its kind (regression for STS-B, else classification) and its class names in
    class-id order (`TaskSpec.label_names`), which an export writes as id2label."""
    if spec.is_regression:
        return {"name": spec.name, "kind": "regression", "labels": None}
    return {"name": spec.name, "kind": "classification", "labels": list(spec.label_names)}


def predictions_from_logits(task: str, logits: np.ndarray) -> np.ndarray:
    """Class ids [N] (argmax) or regression values [N]."""
    if glue_data.get_task(task).is_regression:
        return logits[:, 0].astype(np.float32)
    return logits.argmax(axis=-1).astype(np.int64)


class GlueTask:
    """One GLUE task: BertForSequenceClassification on the pooled [CLS] vector (STS-B: one
    output, squared error; the rest softmax cross-entropy). The score of an evaluation is
    `glue_metrics.task_score` over the dev splits (e.g. the mean of MRPC's F1 and accuracy,
    MNLI's matched and mismatched accuracy). `finish` predicts the test splits (with MNLI,
    AX too) and writes WORKDIR/submission/<GLUE server file>.tsv."""

    head = "classifier"
    targets = (LABEL,)
    outputs = ("logits",)
    token_outputs = False
    output_files = (SUBMISSION_DIR,)

    def __init__(self, cfg: GlueConfig, model_config: ModelConfig, tokenizer: Any):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.spec = cfg.task.spec
        self.name = self.spec.name
        self.model = BertForSequenceClassification(model_config, self.spec.num_labels)
        self.metadata = task_metadata(self.spec)
        self.objective = SequenceObjective(self.spec.is_regression)
        self.train: Split | None = None
        self.evals: list[Split] = []
        self.tests: list[Split] = []

    def load_data(self, *, training: bool) -> Split | None:
        self.train, self.evals, self.tests = load_data(
            self.cfg.task,
            self.tokenizer,
            with_test=self.cfg.train.predict_test,
            with_train=training,
        )
        return self.train

    def describe(self) -> str:
        splits = ([self.train] if self.train else []) + self.evals + self.tests
        return ", ".join(f"{d.task} {d.name} {d.size}" for d in splits)

    def summary(self) -> dict[str, Any]:
        return {"num_train_examples": self.train.size if self.train else 0}

    def evaluate(self, predict: Predict) -> Evaluation:
        logits = {d.name: predict(d)["logits"] for d in self.evals}
        metrics, losses = score_splits(self.name, logits, self.evals)
        return Evaluation(metrics, glue_metrics.task_score(self.name, metrics), losses)

    def write_best(self, evaluation: Evaluation, workdir: str) -> None:
        del evaluation, workdir  # the submission is predicted once, by finish

    def finish(self, predict: Predict, workdir: str) -> dict[str, Any]:
        predictions: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        files: dict[str, str] = {}
        for data in self.tests:
            preds = predictions_from_logits(data.task, predict(data)["logits"])
            index = data.arrays[EXAMPLE_INDEX]
            predictions.setdefault(data.task, {})[data.name] = {
                "index": index,
                "prediction": preds,
            }
            if jax.process_index() == 0:
                path = glue_metrics.write_submission(
                    data.task, data.name, index, preds, os.path.join(workdir, SUBMISSION_DIR)
                )
                files[os.path.basename(path)] = path
        return {"submission_files": files, "predictions": predictions}


FAMILY = TaskFamily(parse=GlueConfig.from_config_dict, build=GlueTask)
