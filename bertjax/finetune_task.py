"""The interface a downstream task implements to run on the fine-tuning engine (finetune.py),
and the config groups every task's config shares.

A task (`Task`) brings its model (encoder + head), its loss (`Objective`: per-row sums, so
sequence-level and token-level losses share one step), its featurized splits (`Split`: arrays
at max_seq_length and per-row lengths), `evaluate(predict) -> Evaluation` (metrics, score,
losses, artefacts), `write_best` (files of the best evaluation) and `finish` (outputs made
with the best parameters). A family of tasks (`TaskFamily`) turns a ConfigDict into its
resolved config (a `RunConfig`, built from the shared groups by `resolve_common`) and builds
the task. The families: glue_task.py (GLUE), squad.py (SQuAD), ner.py (NER); tasks.py picks
one for a config.

This module imports no task and not the engine: the engine and the tasks both build on it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import sharding
from bertjax.config import ModelConfig, from_group
from bertjax.optim import OptimConfig
from data_pipelines import bucketing
from data_pipelines.features import INPUT_IDS, INPUT_MASK, LABEL, SEGMENT_IDS

MODEL_INPUTS = (INPUT_IDS, INPUT_MASK, SEGMENT_IDS)


# --- Config (every task) ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelOverrides:
    """Fields of the checkpoint's ModelConfig replaced for fine-tuning; None keeps its value."""

    hidden_dropout_rate: float | None = 0.1  # dropout on embeddings, sub-layers and the head
    attention_dropout_rate: float | None = 0.1  # dropout on attention probabilities
    dtype: str | None = None  # compute dtype (None = checkpoint's; bfloat16)
    param_dtype: str | None = None  # master weights (None = checkpoint's)
    remat: bool | None = None  # recompute layers (None = checkpoint's)
    remat_policy: str | None = None  # with remat: what to keep (None = checkpoint's)
    scan_layers: bool = False  # nn.scan over the layers: one compiled body, faster compiles

    def apply(self, config: ModelConfig) -> ModelConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return config.replace(**changes)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How rows are batched (data_pipelines/bucketing.py)."""

    bucket_multiple: int = bucketing.DEFAULT_MULTIPLE  # 0: every batch at max_seq_length
    packing: bool = False  # several examples per row of max_seq_length (sequence-level tasks)
    packed_shapes: int = 2  # packing: the most row counts (compiled shapes) of the train step

    def __post_init__(self):
        if self.bucket_multiple < 0:
            raise ValueError(f"config.data.bucket_multiple={self.bucket_multiple}: must be >= 0")
        if self.packed_shapes < 1:
            raise ValueError(f"config.data.packed_shapes={self.packed_shapes}: must be >= 1")

    def buckets(self, max_seq_length: int) -> tuple[int, ...]:
        """The bucket lengths for rows of at most `max_seq_length` tokens."""
        if not self.bucket_multiple:
            return (max_seq_length,)
        return bucketing.bucket_lengths(max_seq_length, self.bucket_multiple)


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    """Loop lengths; steps follow from the number of training rows."""

    batch_size: int = 32  # global batch (rows), split over processes and devices
    eval_batch_size: int = 0  # batch for evaluation and prediction (0 = batch_size)
    num_epochs: float = 3.0  # passes over the training rows (0 = only evaluate the checkpoint)
    eval_every_epoch: bool = True  # evaluate on dev after every epoch (else only at the end)
    log_every: int = 50  # steps between metric fetches / log lines
    checkpoint_every: int = 1000  # steps between resume checkpoints (and one at SIGTERM)
    keep_checkpoints: int = 2  # newest resume checkpoints kept (all removed once complete)

    def __post_init__(self):
        for name in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: must be > 0")
        if self.eval_batch_size < 0:
            raise ValueError(f"config.train.eval_batch_size={self.eval_batch_size}: must be >= 0")
        if not self.num_epochs >= 0:
            raise ValueError(f"config.train.num_epochs={self.num_epochs}: must be >= 0")

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


# Fine-tuning's `optim` group is OptimConfig with warmup_steps replaced by this share of the
# run's steps (`optim.warmup_fraction`), BERT's 10%.
WARMUP_FRACTION = 0.1


def resolve_common(
    config: Any, *, groups: Sequence[str], train_cls: type, model_cls: type = ModelOverrides
) -> dict[str, Any]:
    """The groups every fine-tuning config shares, resolved: model (`model_cls`), optim,
    warmup_fraction, train (`train_cls`), data, mesh, seed, init_checkpoint. `groups` are the
    task's own top-level keys (e.g. task, eval); any other key is an error, as is
    warmup_steps."""
    top = {"model", "optim", "train", "data", "mesh", "seed", "init_checkpoint", *groups}
    unknown = sorted(set(config.keys()) - top)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known: {sorted(top)}")
    optim = dict(config.optim.to_dict())
    warmup_fraction = float(optim.pop("warmup_fraction", WARMUP_FRACTION))
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"config.optim.warmup_fraction={warmup_fraction}: must be in [0, 1]")
    if "warmup_steps" in optim:
        raise ValueError("config.optim.warmup_steps: use warmup_fraction for fine-tuning")
    return dict(
        model=from_group(model_cls, config.model, "config.model"),
        optim=OptimConfig.from_config_dict({**optim, "warmup_steps": 0}),
        warmup_fraction=warmup_fraction,
        train=from_group(train_cls, config.train, "config.train"),
        data=from_group(DataConfig, config.get("data", {}), "config.data"),
        mesh=sharding.MeshConfig.from_config_dict(config.mesh),
        seed=int(config.seed),
        init_checkpoint=str(config.init_checkpoint or ""),
    )


class RunConfig(Protocol):
    """What the engine reads of a task family's resolved config."""

    task: Any  # .name, .max_seq_length
    model: ModelOverrides
    optim: OptimConfig
    train: TrainLoopConfig
    data: DataConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str

    @property
    def num_segments(self) -> int: ...  # 2 for sentence pairs, 1 for single texts

    def optim_for(self, num_steps: int) -> OptimConfig: ...


# --- The task interface -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """Featurized rows of one split.

    `arrays`: the model inputs (input_ids, input_mask, segment_ids: int [N, T], T the task's
    max_seq_length), the training targets (e.g. label [N], start_positions [N], per-token
    labels [N, T]) and anything else the task keeps per row. Arrays of two or more
    dimensions are per token: a batch cuts them to its bucket length along axis 1.
    `lengths`: int [N], each row's length (its last real token + 1, from input_mask).
    """

    name: str
    arrays: dict[str, np.ndarray]
    task: str = ""  # the split's own task where it differs (GLUE: ax under mnli)

    @property
    def size(self) -> int:
        return len(self.arrays[INPUT_IDS])

    @property
    def max_length(self) -> int:
        return int(self.arrays[INPUT_IDS].shape[1])

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        real = np.asarray(self.arrays[INPUT_MASK]) > 0  # [N, T]
        return np.where(real.any(axis=1), real.shape[1] - np.argmax(real[:, ::-1], axis=1), 1)


Predict = Callable[[Split], dict[str, np.ndarray]]
"""Runs the model (without dropout) over every row of a split; returns the task's `outputs`,
each [N, ...] fp32 in the split's row order. Per-token outputs come back [N, T, ...]: the
positions beyond a row's bucket length hold 0 (they are padding)."""


@dataclasses.dataclass
class Evaluation:
    """One evaluation of a task: `metrics` (percent), `score` (higher is better; the best
    evaluation is kept), `losses` (eval losses keyed loss<suffix>), `artefacts` (what
    `Task.write_best` writes when this evaluation is the best), `headline` (the metrics
    printed; all when empty)."""

    metrics: dict[str, float]
    score: float
    losses: dict[str, float]
    artefacts: Any = None
    headline: tuple[str, ...] = ()


class Objective(Protocol):
    """A task's training loss, as per-row sums so that one step serves row-level and
    token-level tasks: the step's value of a key is sum(row value * row weight) /
    sum(row count * row weight) over the whole batch."""

    def row_counts(self, batch: dict[str, jax.Array]) -> jax.Array:
        """float [B]: the targets of each row (1 for a sequence task, the labelled tokens
        for a token task); computed from the batch alone."""
        ...

    def row_losses(
        self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """Per-row sums, each float [B]: "loss" (the row's summed loss) and any counts to
        report (e.g. "accuracy": correct targets). fp32."""
        ...


@dataclasses.dataclass(frozen=True)
class SequenceObjective:
    """A row-level head on the pooled vector: softmax cross-entropy and accuracy over the
    `label` classes, or (regression) the squared error of one output. Packed rows
    (`finetune_batching.Batching.packing`) hold K examples: labels, weights and the returned
    values are then [B, K] instead of [B]."""

    regression: bool = False

    def row_counts(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.ones(batch[LABEL].shape, jnp.float32)  # [B], or [B, K] packed

    def row_losses(
        self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        logits = outputs["logits"].astype(jnp.float32)  # [B, L], or [B, K, L] packed
        if self.regression:
            return {"loss": jnp.square(logits[..., 0] - batch[LABEL].astype(jnp.float32))}
        labels = batch[LABEL]
        return {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            "accuracy": (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32),
        }


@dataclasses.dataclass(frozen=True)
class TokenObjective:
    """A per-token head (`model.BertForTokenClassification`, e.g. named entities): softmax
    cross-entropy and accuracy over the tokens whose label (`labels` [B, T]) is not
    `ignore_index` (padding, [CLS]/[SEP], word continuations)."""

    labels: str = LABEL
    ignore_index: int = -100

    def row_counts(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.sum(batch[self.labels] != self.ignore_index, axis=1).astype(jnp.float32)

    def row_losses(
        self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        logits = outputs["logits"].astype(jnp.float32)  # [B, T, L]
        labels = batch[self.labels]  # [B, T]
        known = labels != self.ignore_index
        safe = jnp.where(known, labels, 0)
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, safe)  # [B, T]
        correct = jnp.argmax(logits, axis=-1) == safe
        return {
            "loss": jnp.sum(jnp.where(known, per_token, 0.0), axis=1),
            "accuracy": jnp.sum(known & correct, axis=1).astype(jnp.float32),
        }


class Task(Protocol):
    """A downstream task as the engine sees it (built by its `TaskFamily`)."""

    name: str  # e.g. "mrpc", "squad_v1"
    model: nn.Module  # encoder + head: apply(batch, train=...) -> dict of outputs
    head: str  # the head's top-level parameter name, fresh when training starts
    metadata: dict[str, Any]  # {"name", "kind", "labels"} recorded in WORKDIR/best
    objective: Objective
    targets: tuple[str, ...]  # training target arrays (besides MODEL_INPUTS)
    outputs: tuple[str, ...]  # model outputs that predictions collect
    token_outputs: bool  # the outputs are per token ([N, T, ...]), not per row
    output_files: tuple[str, ...]  # names under WORKDIR the task writes (cleared when fresh)
    # Optional: `frozen`, top-level parameter groups that do not train (`freeze`; NER's
    # feature-based mode freezes "bert").

    def load_data(self, *, training: bool) -> Split | None:
        """Reads and featurizes every split the run uses (raising on bad files before the
        workdir is written); returns the training split (None when not `training`)."""
        ...

    def describe(self) -> str:
        """One log line on the data (splits and sizes)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Fields of eval_results.json describing the data (e.g. num_train_examples)."""
        ...

    def evaluate(self, predict: Predict) -> Evaluation: ...

    def write_best(self, evaluation: Evaluation, workdir: str) -> None:
        """Writes the files of the best evaluation so far (process 0)."""
        ...

    def finish(self, predict: Predict, workdir: str) -> dict[str, Any]:
        """Outputs made with the best parameters once the run is over (e.g. test
        predictions); returns fields for the results (`predictions` is returned only)."""
        ...


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """How a family of tasks plugs in: `parse` validates a ConfigDict (no file is read) into
    a `RunConfig`; `build(cfg, model_config, tokenizer)` makes the `Task` (cheap: data are
    read by `Task.load_data`)."""

    parse: Callable[[Any], Any]
    build: Callable[[Any, ModelConfig, Any], Task]
