"""Fine-tuning BERT on SQuAD v1.1 / v2.0: the span task of the fine-tuning engine.

`finetune_squad(config, workdir)` runs `finetune.finetune` (the one engine: resume, length
bucketing, evaluate-only) with `SpanTask` (`FAMILY`); this module holds what is SQuAD's own:
the config, reading and featurizing the splits (data_pipelines/squad.py), the span loss, and
turning span logits into answers, scores and files (bertjax/squad_metrics.py). A run writes
what every fine-tuning run writes (finetune.py) plus

    WORKDIR/predictions.json          {question id: answer text} of the best evaluation
                                      (v2.0: "" = no answer, at eval.null_score_diff_threshold)
    WORKDIR/nbest_predictions.json    {id: [{text, probability, start_logit, end_logit}, ...]}
    WORKDIR/null_odds.json            v2.0: {id: null score - best non-null score}
    WORKDIR/predictions_tuned.json    v2.0: the predictions at the null threshold tuned on dev

and eval_results.json also reports the data issues (skipped examples by reason, per split).

Model: `BertForQuestionAnswering`, a dense layer (2 outputs) on the sequence output giving start
and end logits per token; the encoder comes from `init_checkpoint` (a bertjax model dir or a
pre-training workdir; its pooler and pre-training heads are dropped), the span head is fresh. The
loss is the mean of the start and end cross-entropies over the real tokens (`SpanObjective`).
With `train.num_epochs=0` nothing is trained (`finetune.evaluate_checkpoint`): the checkpoint must
then hold a span head (a previous run's WORKDIR/best) and the run only predicts and evaluates the
dev set.

Evaluation: the span logits of every dev feature (back in feature order after the bucketed
prediction) are decoded into answers (`squad_metrics.decode_predictions`) and scored with the
official metric (`squad_metrics.evaluate_predictions`). The run's score (best epoch) is F1: v1.1
f1, v2.0 `tuned_f1`, the F1 at the null threshold tuned on dev
(`squad_metrics.tune_null_threshold`, reported as `tuned_null_threshold`), which is how the
paper's dev numbers are obtained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import finetune as ft
from bertjax import sharding, squad_metrics, storage, trainer
from bertjax.config import ModelConfig, from_group
from bertjax.finetune_task import (
    DataConfig,
    Evaluation,
    ModelOverrides,
    Predict,
    Split,
    TaskFamily,
    TrainLoopConfig,
    resolve_common,
)
from bertjax.model import BertForQuestionAnswering
from bertjax.optim import OptimConfig
from data_pipelines import squad as squad_data
from data_pipelines.features import END_POSITIONS, INPUT_MASK, START_POSITIONS

PREDICTIONS_FILE = "predictions.json"
NBEST_FILE = "nbest_predictions.json"
NULL_ODDS_FILE = "null_odds.json"
TUNED_PREDICTIONS_FILE = "predictions_tuned.json"


def is_squad_config(config: Any) -> bool:
    """Whether an experiment config is a SQuAD one (`config.task.name` is squad_v1/squad_v2);
    `tasks.task_family` picks `FAMILY` (`SpanTask`) for these."""
    try:
        return str(config.task.name) in squad_data.TASKS
    except (AttributeError, KeyError):
        return False


# --- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SquadTaskConfig:
    """Which SQuAD version, where its files are, and the window (see experiments/squad)."""

    name: str = ""  # squad_v1 | squad_v2
    data_dir: str = ""  # directory of train-v1.1.json, dev-v1.1.json (v2.0 alike) or 'tfds'
    train_file: str = ""  # training JSON, relative to data_dir ('' = the standard name)
    dev_file: str = ""  # dev JSON, relative to data_dir ('' = the standard name)
    tfds_data_dir: str = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    max_train_examples: int = 0  # train on the first N questions only (0 = all)
    max_eval_examples: int = 0  # evaluate on the first N dev questions only (0 = all)
    max_seq_length: int = 384  # tokens per feature: [CLS] question [SEP] window [SEP]
    doc_stride: int = 128  # context tokens between the starts of consecutive windows
    max_query_length: int = 64  # questions are cut to this many tokens

    def __post_init__(self):
        if not self.name:
            raise ValueError("config.task.name is required (squad_v1 or squad_v2)")
        squad_data.get_task(self.name)  # ValueError naming the task when unknown
        if not self.data_dir:
            raise ValueError("config.task.data_dir is required: a SQuAD data directory or 'tfds'")
        if self.max_seq_length < 4:
            raise ValueError(f"config.task.max_seq_length={self.max_seq_length}: must be >= 4")
        for name in ("doc_stride", "max_query_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 1")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.task.{name}={getattr(self, name)}: must be >= 0")

    @property
    def spec(self) -> squad_data.SquadTask:
        return squad_data.get_task(self.name)

    def file(self, split: str) -> str:
        """The JSON file of "train" or "validation": the configured name (relative to data_dir
        unless absolute) or the standard one."""
        name = self.train_file if split == "train" else self.dev_file
        if not name:
            return squad_data.default_file(self.name, self.data_dir, split)
        return os.path.join(self.data_dir, name)


SquadTrainConfig = TrainLoopConfig  # SQuAD's loop has nothing of its own


@dataclasses.dataclass(frozen=True)
class SquadEvalConfig:
    """Answer decoding."""

    n_best_size: int = 20  # start and end positions tried per feature; n-best list length
    max_answer_length: int = 30  # longest answer, in tokens
    null_score_diff_threshold: float = 0.0  # v2.0: answer "" when null - best score exceeds it

    def __post_init__(self):
        for name in ("n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.eval.{name}={getattr(self, name)}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class SquadConfig:
    """The resolved SQuAD experiment: what library code receives."""

    task: SquadTaskConfig
    model: ModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: TrainLoopConfig
    eval: SquadEvalConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str
    data: DataConfig = DataConfig()

    num_segments = 2  # question and context

    @classmethod
    def from_config_dict(cls, config: Any) -> SquadConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        common = resolve_common(config, groups=("task", "eval"), train_cls=SquadTrainConfig)
        return cls(
            task=from_group(SquadTaskConfig, config.task, "config.task"),
            eval=from_group(SquadEvalConfig, config.get("eval", {}), "config.eval"),
            **common,
        )

    def optim_for(self, num_steps: int) -> OptimConfig:
        return dataclasses.replace(
            self.optim, warmup_steps=int(round(self.warmup_fraction * num_steps))
        )


# --- Data ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadSplit:
    """The examples of one split and their features."""

    split: str
    examples: list[squad_data.SquadExample]
    features: squad_data.SquadFeatures

    @property
    def size(self) -> int:
        return self.features.size


def read_examples(cfg: SquadTaskConfig, split: str) -> list[squad_data.SquadExample]:
    """One split ("train" or "validation") from the local JSON file or TFDS (data_dir='tfds')."""
    if cfg.data_dir == "tfds":
        return squad_data.load_tfds_split(cfg.name, split, data_dir=cfg.tfds_data_dir or None)
    return squad_data.read_squad_file(cfg.file(split))


def load_split(cfg: SquadTaskConfig, tokenizer: Any, split: str) -> SquadSplit:
    """The (first max_*_examples) examples of a split, featurized for training or evaluation."""
    training = split == "train"
    examples = read_examples(cfg, split)
    limit = cfg.max_train_examples if training else cfg.max_eval_examples
    if limit:
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"{cfg.spec.display_name} {split}: no examples (data_dir={cfg.data_dir})")
    feats = squad_data.featurize(
        examples,
        tokenizer,
        max_seq_length=cfg.max_seq_length,
        doc_stride=cfg.doc_stride,
        max_query_length=cfg.max_query_length,
        is_training=training,
        version_2_with_negative=cfg.spec.version_2_with_negative,
    )
    if training and feats.size == 0:
        raise ValueError(
            f"{cfg.spec.display_name} train: every example was skipped "
            f"({feats.issue_counts()}); see the log"
        )
    return SquadSplit(split, examples, feats)


# --- The span task ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpanObjective:
    """The span loss: the mean of the start and end softmax cross-entropies over the row's
    real tokens (input_mask), at `start_positions` / `end_positions` (0, [CLS], for no
    answer); reports start_accuracy and end_accuracy (argmax over the real tokens)."""

    def row_counts(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.ones(batch[START_POSITIONS].shape[:1], jnp.float32)

    def row_losses(
        self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        mask = batch[INPUT_MASK] > 0  # [B, T]
        neg = jnp.finfo(jnp.float32).min
        start = jnp.where(mask, outputs["start_logits"].astype(jnp.float32), neg)  # [B, T]
        end = jnp.where(mask, outputs["end_logits"].astype(jnp.float32), neg)
        s, e = batch[START_POSITIONS], batch[END_POSITIONS]
        ce = optax.softmax_cross_entropy_with_integer_labels
        return {
            "loss": 0.5 * (ce(start, s) + ce(end, e)),
            "start_accuracy": (jnp.argmax(start, axis=-1) == s).astype(jnp.float32),
            "end_accuracy": (jnp.argmax(end, axis=-1) == e).astype(jnp.float32),
        }


def span_eval_loss(
    start_logits: np.ndarray, end_logits: np.ndarray, feats: dict[str, np.ndarray]
) -> float:
    """Mean span loss over the features whose positions are known (nan when none are);
    logits [N, T], positions beyond a row's real tokens are ignored."""
    known = feats[START_POSITIONS] >= 0
    if not known.any():
        return float("nan")
    mask = feats[INPUT_MASK][known] > 0

    def ce(logits: np.ndarray, positions: np.ndarray) -> np.ndarray:
        x = np.where(mask, logits[known].astype(np.float64), -np.inf)
        top = x.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(x - top).sum(axis=-1)) + top[:, 0]
        return log_z - x[np.arange(len(x)), positions]

    loss = 0.5 * (
        ce(start_logits, feats[START_POSITIONS][known])
        + ce(end_logits, feats[END_POSITIONS][known])
    )
    return float(loss.mean())


def _issues(data: SquadSplit) -> dict[str, Any]:
    feats = data.features
    return {
        "examples": feats.num_examples,
        "features": feats.size,
        "skipped": feats.issue_counts(),
        "truncated_questions": feats.num_truncated_questions,
        "issues": [dataclasses.asdict(i) for i in feats.issues],
    }


class SpanTask:
    """SQuAD v1.1 / v2.0 as a task of the fine-tuning engine (see the module doc)."""

    head = "qa_outputs"
    targets = (START_POSITIONS, END_POSITIONS)
    outputs = ("start_logits", "end_logits")
    token_outputs = True
    output_files = (PREDICTIONS_FILE, NBEST_FILE, NULL_ODDS_FILE, TUNED_PREDICTIONS_FILE)

    def __init__(self, cfg: SquadConfig, model_config: ModelConfig, tokenizer: Any):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.spec = cfg.task.spec
        self.v2 = self.spec.version_2_with_negative
        self.name = self.spec.name
        self.model = BertForQuestionAnswering(model_config)
        self.metadata = {"name": self.spec.name, "kind": "span", "labels": None}
        self.objective = SpanObjective()
        self.train: SquadSplit | None = None
        self.dev: SquadSplit | None = None

    def load_data(self, *, training: bool) -> Split | None:
        self.train = load_split(self.cfg.task, self.tokenizer, "train") if training else None
        self.dev = load_split(self.cfg.task, self.tokenizer, "validation")
        return Split("train", self.train.features.arrays) if self.train else None

    def describe(self) -> str:
        train = self.train
        return (
            f"{self.spec.display_name}: "
            + (f"train {len(train.examples)} examples -> {train.size} features" if train else "")
            + f"{'; ' if train else ''}dev {len(self.dev.examples)} examples -> "
            + f"{self.dev.size} features"
        )

    def summary(self) -> dict[str, Any]:
        train = self.train
        report = {"validation": _issues(self.dev), **({"train": _issues(train)} if train else {})}
        return {
            "num_train_examples": len(train.examples) if train else 0,
            "num_train_features": train.size if train else 0,
            "data": report,
        }

    def evaluate(self, predict: Predict) -> Evaluation:
        dev, v2, e = self.dev, self.v2, self.cfg.eval
        logits = predict(Split("validation", dev.features.arrays))  # feature order
        starts, ends = logits["start_logits"], logits["end_logits"]  # [N, T]
        preds = squad_metrics.decode_predictions(
            dev.examples,
            dev.features.arrays,
            starts,
            ends,
            n_best_size=e.n_best_size,
            max_answer_length=e.max_answer_length,
            version_2_with_negative=v2,
            null_score_diff_threshold=e.null_score_diff_threshold,
        )
        metrics = squad_metrics.evaluate_predictions(
            dev.examples,
            preds.predictions,
            version_2_with_negative=v2,
            null_odds=preds.null_odds if v2 else None,
        )
        tuned: dict[str, str] = {}
        if v2:
            threshold, tuned = squad_metrics.tune_null_threshold(
                dev.examples, preds.best_non_null, preds.null_odds
            )
            at = squad_metrics.evaluate_predictions(
                dev.examples, tuned, version_2_with_negative=True
            )
            metrics.update(
                tuned_null_threshold=threshold, tuned_exact=at["exact"], tuned_f1=at["f1"]
            )
        return Evaluation(
            metrics=metrics,
            score=metrics["tuned_f1"] if v2 else metrics["f1"],
            losses={"loss": span_eval_loss(starts, ends, dev.features.arrays)},
            artefacts=(preds, tuned),
            headline=("exact_match", "exact", "f1", "tuned_f1", "tuned_null_threshold"),
        )

    def _files(self, workdir: str) -> dict[str, str]:
        names = self.output_files if self.v2 else (PREDICTIONS_FILE, NBEST_FILE)
        return {name: os.path.join(workdir, name) for name in names}

    def write_best(self, evaluation: Evaluation, workdir: str) -> None:
        if jax.process_index() != 0:
            return
        preds, tuned = evaluation.artefacts
        values = {PREDICTIONS_FILE: preds.predictions, NBEST_FILE: preds.nbest}
        values.update({NULL_ODDS_FILE: preds.null_odds, TUNED_PREDICTIONS_FILE: tuned})
        for name, path in self._files(workdir).items():
            indent = None if name == NBEST_FILE else 2
            storage.write_json(
                path, values[name], indent=indent, sort_keys=False, ensure_ascii=False
            )

    def finish(self, predict: Predict, workdir: str) -> dict[str, Any]:
        """The prediction files of the best evaluation (written by write_best, possibly by the
        run before a restart) and its predictions read back."""
        del predict
        trainer.sync("squad_predictions")
        files = self._files(workdir)
        predictions = storage.read_json(files[PREDICTIONS_FILE])
        return {"prediction_files": files, "predictions": predictions}


FAMILY = TaskFamily(parse=SquadConfig.from_config_dict, build=SpanTask)


def finetune_squad(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """`finetune.finetune` of a SQuAD config (its doc gives what is returned and raised): the
    results also hold `num_train_features`, `data` (examples, features, skipped examples by
    reason, every issue with its question id, per split), `prediction_files` ({name: path})
    and `predictions` ({question id: answer} of the best evaluation)."""
    if not is_squad_config(config_dict):
        SquadConfig.from_config_dict(config_dict)  # names the unknown task
    return ft.finetune(FAMILY, config_dict, workdir, devices=devices)
