"""Fine-tuning BERT on one GLUE task, on a device mesh.

Reads top to bottom like pretrain.py: config -> checkpoint and tokenizer -> data -> mesh ->
model and optimizer -> sharded state -> loop (train, evaluate each epoch, keep the best) ->
predict the test splits with the best parameters.

    WORKDIR/run_config.json     the config as given (ConfigDict as JSON)
    WORKDIR/metrics.jsonl       train metrics every train.log_every steps; one "eval" record
                                per evaluation (task metrics in percent, score, losses)
    WORKDIR/tensorboard/        the same metrics for TensorBoard
    WORKDIR/best/               bertjax model dir (with the tokenizer) of the best evaluation
                                and the task's class names (`task_metadata`)
    WORKDIR/eval_results.json   best metrics and score, every evaluation, the config;
                                "complete": true once the run has finished
    WORKDIR/submission/         GLUE-server files of the test splits (when they exist), predicted
                                with the best parameters; the MNLI run also writes AX.tsv

The classifier is BertForSequenceClassification on the pooled [CLS] vector: the encoder and
pooler come from `init_checkpoint` (a bertjax model dir or a pre-training workdir; its MLM/NSP
heads and any previous classifier are dropped), the classifier head is fresh. STS-B is a
regression (one output, mean squared error); every other task is softmax cross-entropy.

Batches: the training examples are shuffled each epoch (seeded); the last batch of an epoch is
filled up with copies of a real row that carry weight 0, so every example is seen once per epoch
and the step shape never changes. Evaluation and prediction pad the same way and never drop an
example. The best evaluation is chosen by the task score (`glue_metrics.task_score`: the mean of
the task's metrics, e.g. MRPC F1 and accuracy, MNLI matched and mismatched accuracy).

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
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import glue_metrics, losses, sharding
from bertjax.config import ModelConfig, from_group
from bertjax.model import BertForSequenceClassification, stack_layers
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from bertjax.pretrain import (
    MetricWriter,
    TrainState,
    accumulate_gradients,
    apply_guarded_update,
    new_train_state,
)
from data_pipelines import glue as glue_data
from data_pipelines.features import INPUT_IDS, INPUT_MASK, LABEL, SEGMENT_IDS

log = logging.getLogger(__name__)

MODEL_INPUTS = (INPUT_IDS, INPUT_MASK, SEGMENT_IDS)
WEIGHT = "weight"  # 1 for real rows, 0 for the rows that fill up a last batch
RESULTS_FILE = "eval_results.json"
BEST_DIR = "best"
SUBMISSION_DIR = "submission"


# --- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which task and how its examples are read (see experiments/glue/common.py)."""

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
class FinetuneTrainConfig:
    """Loop lengths; steps follow from the number of training examples."""

    batch_size: int = 32
    eval_batch_size: int = 0  # 0: batch_size
    num_epochs: float = 3.0
    eval_every_epoch: bool = True
    log_every: int = 50
    predict_test: bool = True

    def __post_init__(self):
        for name in ("batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: must be > 0")
        if self.eval_batch_size < 0:
            raise ValueError(f"config.train.eval_batch_size={self.eval_batch_size}: must be >= 0")
        if not self.num_epochs > 0:
            raise ValueError(f"config.train.num_epochs={self.num_epochs}: must be > 0")

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The resolved fine-tuning experiment: what library code receives."""

    task: TaskConfig
    model: ModelOverrides
    optim: OptimConfig  # warmup_steps is set from warmup_fraction by optim_for()
    warmup_fraction: float
    train: FinetuneTrainConfig
    mesh: sharding.MeshConfig
    seed: int
    init_checkpoint: str

    @classmethod
    def from_config_dict(cls, config: Any) -> FinetuneConfig:
        """Validates a ConfigDict (without reading any file); unknown keys are errors."""
        top = {"task", "model", "optim", "train", "mesh", "seed", "init_checkpoint"}
        unknown = sorted(set(config.keys()) - top)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(top)}")
        optim = dict(config.optim.to_dict())
        warmup_fraction = float(optim.pop("warmup_fraction", 0.1))
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"config.optim.warmup_fraction={warmup_fraction}: must be in [0, 1]")
        if "warmup_steps" in optim:
            raise ValueError("config.optim.warmup_steps: use warmup_fraction for fine-tuning")
        return cls(
            task=from_group(TaskConfig, config.task, "config.task"),
            model=from_group(ModelOverrides, config.model, "config.model"),
            optim=OptimConfig.from_config_dict({**optim, "warmup_steps": 0}),
            warmup_fraction=warmup_fraction,
            train=from_group(FinetuneTrainConfig, config.train, "config.train"),
            mesh=sharding.MeshConfig.from_config_dict(config.mesh),
            seed=int(config.seed),
            init_checkpoint=str(config.init_checkpoint or ""),
        )

    def optim_for(self, num_steps: int) -> OptimConfig:
        return dataclasses.replace(
            self.optim, warmup_steps=int(round(self.warmup_fraction * num_steps))
        )


# --- Data ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitData:
    """Featurized examples of one split (`task` is the split's own task: ax for AX)."""

    task: str
    split: str
    features: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.features[INPUT_IDS])


def read_examples(cfg: TaskConfig, task: str, split: str) -> list[glue_data.Example]:
    """One split from the local GLUE files or from TFDS (`data_dir='tfds'`)."""
    if cfg.data_dir == "tfds":
        return glue_data.load_tfds_split(task, split, data_dir=cfg.tfds_data_dir or None)
    return glue_data.read_split(task, cfg.data_dir, split)


def has_split(cfg: TaskConfig, task: str, split: str) -> bool:
    """Whether a split can be read: always with TFDS, locally when its file exists."""
    if cfg.data_dir == "tfds":
        return True
    return os.path.isfile(glue_data.task_file(task, cfg.data_dir, split))


def prediction_splits(cfg: TaskConfig) -> list[tuple[str, str]]:
    """(task, split) of every test split the run predicts: the task's own, plus those of tasks
    predicted with its model (MNLI: AX), when their data exist."""
    spec = cfg.spec
    tasks = [spec] + [
        t for t in glue_data.TASKS.values() if t.predict_with == spec.name and t.name != spec.name
    ]
    return [(t.name, s) for t in tasks for s in t.test_splits if has_split(cfg, t.name, s)]


def load_data(
    cfg: TaskConfig, tokenizer: Any, *, with_test: bool = True
) -> tuple[SplitData, list[SplitData], list[SplitData]]:
    """(train, eval splits, test splits), featurized to cfg.max_seq_length."""
    spec = cfg.spec

    def featurize(task: str, split: str, limit: int) -> SplitData | None:
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
        return SplitData(task, split, feats)

    train = featurize(spec.name, "train", cfg.max_train_examples)
    evals = [featurize(spec.name, s, cfg.max_eval_examples) for s in spec.eval_splits]
    tests = [featurize(t, s, 0) for t, s in prediction_splits(cfg)] if with_test else []
    return train, evals, [t for t in tests if t is not None]  # type: ignore[return-value]


def batch_rows(order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(row indexes [batch_size], number of real rows) for consecutive batches of `order`;
    the last batch is filled up with copies of its first row."""
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        n = len(rows)
        if n < batch_size:
            rows = np.concatenate([rows, np.full(batch_size - n, rows[0], rows.dtype)])
        yield rows, n


def take(
    features: dict[str, np.ndarray], rows: np.ndarray, n_real: int, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """The batch of `rows` (features `keys` plus `weight`: 1 for the first n_real rows)."""
    batch = {k: features[k][rows] for k in keys}
    weight = np.zeros(len(rows), np.float32)
    weight[:n_real] = 1.0
    batch[WEIGHT] = weight
    return batch


def _process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous share of a global batch (every process holds all rows)."""
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    size = len(next(iter(batch.values()))) // n
    return {k: v[p * size : (p + 1) * size] for k, v in batch.items()}


# --- Train and predict steps -------------------------------------------------------------------


def init_state(
    seed_key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, seq_len: int
) -> TrainState:
    """A fresh fine-tuning state (the model initialised at this sequence length)."""
    batch = {k: jnp.zeros((1, seq_len), jnp.int32) for k in MODEL_INPUTS}
    return new_train_state(seed_key, model, tx, batch)


def load_checkpoint(cfg: Any, *, num_segments: int = 2) -> tuple[ModelConfig, dict[str, Any], Any]:
    """(model config with the run's overrides, params, tokenizer) of `cfg.init_checkpoint`,
    checked against the run: `cfg.task.max_seq_length` and `num_segments` (2 for sentence
    pairs) fit the position and token-type embeddings, and the tokenizer's ids fit the
    word-embedding table (`checkpoint.check_vocab_fits`)."""
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
    """A sharded fine-tuning state whose encoder comes from `loaded` (checked against the
    model before anything is built) and whose `head` parameters are fresh. `loaded` holds
    the canonical layer_N layout; it is stacked here when the model scans its layers.

    Returns (state, state shardings, a jitted function gathering the parameters whole on
    every process, to save them). Call inside `with mesh, nn.logical_axis_rules(rules)`.
    """
    init_fn = functools.partial(init_state, model=model, tx=tx, seq_len=seq_len)
    seed_key = jax.random.key_data(jax.random.key(seed))
    abstract, state_sharding, init_jit = sharding.sharded_init(init_fn, seed_key, mesh, rules)
    if model.config.scan_layers:  # checkpoints hold the canonical layer_N layout
        loaded = stack_layers(loaded, model.config.num_layers)
    ckpt.merge_params(abstract.params, loaded, source=source)  # shape check first
    state = init_jit(seed_key)
    params, fresh = ckpt.load_into_sharded(
        state.params, loaded, state_sharding.params, source=source
    )
    unexpected = [n for n in fresh if not n.startswith(head)]
    if unexpected:
        log.warning("not in %s, initialised fresh: %s", source, unexpected)
    replicated = NamedSharding(mesh, PartitionSpec())
    gather = jax.jit(
        lambda p: p,
        out_shardings=jax.tree_util.tree_map(lambda _: replicated, state_sharding.params),
    )
    return state.replace(params=params), state_sharding, gather


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    regression: bool,
    grad_accum_steps: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the batch's weighted mean loss (rows of weight 0 do not count);
    a non-finite loss or gradient leaves parameters and optimizer state untouched."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    denominator = jnp.maximum(jnp.sum(batch[WEIGHT].astype(jnp.float32)), 1e-5)

    def loss_fn(params, micro, key):
        logits = model.apply({"params": params}, micro, train=True, rngs={"dropout": key})[
            "logits"
        ]  # [B, L]
        if regression:
            out = losses.regression_loss(logits[:, 0], micro[LABEL], micro[WEIGHT])
            correct = jnp.zeros((), jnp.float32)
        else:
            out = losses.classification_loss(logits, micro[LABEL], micro[WEIGHT])
            correct = out["correct_sum"]
        sums = {"loss_sum": out["loss_sum"], "correct_sum": correct}
        return out["loss_sum"] / denominator, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    grads, sums = accumulate_gradients(grad_fn, state.params, batch, step_key, grad_accum_steps)
    loss = sums["loss_sum"] / denominator
    new_state, grad_norm, finite = apply_guarded_update(state, grads, loss, tx)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "finite": finite.astype(jnp.float32),
    }
    if not regression:
        metrics["accuracy"] = sums["correct_sum"] / denominator
    return new_state, metrics


def predict_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module) -> jax.Array:
    """Logits [B, L] (fp32) without dropout."""
    return model.apply({"params": params}, batch, train=False)["logits"]


# --- Evaluation ---------------------------------------------------------------------------------


def predict_logits(
    p_predict, params: Any, data: SplitData, *, mesh, rules, batch_size: int
) -> np.ndarray:
    """Logits [N, L] of every example of a split, in order (padding rows removed)."""
    out = []
    for rows, n in batch_rows(np.arange(data.size), batch_size):
        batch = sharding.global_batch(
            mesh, rules, _process_rows(take(data.features, rows, n, MODEL_INPUTS))
        )
        out.append(np.asarray(jax.device_get(p_predict(params, batch)))[:n])
    return np.concatenate(out)


def eval_loss(logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """Mean cross-entropy (or squared error for regression) over a split."""
    logits = logits.astype(np.float64)
    if regression:
        return float(np.mean((logits[:, 0] - labels) ** 2))
    top = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


def score_splits(
    task: str, split_logits: dict[str, np.ndarray], evals: Sequence[SplitData]
) -> tuple[dict[str, float], dict[str, float]]:
    """(GLUE metrics in percent over all eval splits, eval losses keyed loss<suffix>)."""
    spec = glue_data.get_task(task)
    metrics: dict[str, float] = {}
    loss_values: dict[str, float] = {}
    for data in evals:
        logits, labels = split_logits[data.split], data.features[LABEL]
        preds = logits[:, 0] if spec.is_regression else logits
        metrics.update(glue_metrics.compute_metrics(task, preds, labels, split=data.split))
        suffix = spec.split(data.split).metric_suffix
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


# --- The run ------------------------------------------------------------------------------------


def _write_json(path: str, value: Any) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def config_to_json(config_dict: Any) -> dict[str, Any]:
    """The ConfigDict as plain JSON values (tuples become lists), as stored in the workdir."""
    return json.loads(config_dict.to_json())


def _encoder_params(loaded: dict[str, Any], source: str) -> dict[str, Any]:
    """The encoder (and pooler) of a checkpoint; its pre-training heads and classifier go."""
    if "bert" not in loaded:
        raise ckpt.CheckpointError(f"{source}: no 'bert' parameters (has {sorted(loaded)})")
    return {"bert": loaded["bert"]}


def finetune(
    config_dict: Any, workdir: str, *, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
    """Fine-tunes on one GLUE task in `workdir` (see the module doc for what it writes).

    `devices` (default: all) is where the (data, fsdp, tensor) mesh of `config.mesh` is laid.
    Returns a dict with `task`, `metrics` (best dev metrics, percent), `score`, `best_epoch`,
    `best_step`, `best_dir`, `history` (every evaluation), `num_steps`, `num_train_examples`,
    `predictions` ({task: {test split: {"index": int64 [N], "prediction": [N]}}}: class ids,
    or STS-B scores; AX appears under the MNLI run) and `submission_files` ({file name: path}).
    """
    cfg = FinetuneConfig.from_config_dict(config_dict)
    spec = cfg.task.spec
    if not cfg.init_checkpoint:
        raise ValueError(
            "config.init_checkpoint is required: a bertjax model dir (`bertjax convert`) or a "
            "pre-training workdir"
        )
    # Checkpoint and tokenizer.
    model_config, loaded, tokenizer = load_checkpoint(
        cfg, num_segments=2 if cfg.task.spec.is_pair else 1
    )
    loaded = _encoder_params(loaded, cfg.init_checkpoint)
    seq_len = cfg.task.max_seq_length

    # Data.
    train, evals, tests = load_data(cfg.task, tokenizer, with_test=cfg.train.predict_test)
    batch_size, eval_batch = cfg.train.batch_size, cfg.train.eval_batch
    steps_per_epoch = math.ceil(train.size / batch_size)
    num_steps = max(1, math.ceil(steps_per_epoch * cfg.train.num_epochs))
    num_epochs = math.ceil(num_steps / steps_per_epoch)
    log.info(
        "%s: %d train examples, %s; %d steps (%d per epoch)",
        spec.name,
        train.size,
        ", ".join(f"{d.task} {d.split} {d.size}" for d in evals + tests),
        num_steps,
        steps_per_epoch,
    )

    # Mesh, model, optimizer.
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    dp = sharding.data_parallel_size(mesh, rules)
    sharding.check_divisible(batch_size, mesh, rules, what="config.train.batch_size")
    sharding.check_divisible(eval_batch, mesh, rules, what="config.train.eval_batch_size")
    accum = cfg.optim.grad_accum_steps
    if batch_size % (accum * dp):
        raise ValueError(
            f"config.train.batch_size={batch_size} must split into grad_accum_steps={accum} "
            f"micro-batches, each divisible by the data-parallel size {dp}"
        )

    # The workdir is only written once the inputs are known to be good.
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "run_config.json"), config_to_json(config_dict))
    _write_json(os.path.join(workdir, RESULTS_FILE), {"task": spec.name, "complete": False})
    if jax.process_index() == 0:  # no stale predictions from an earlier run
        shutil.rmtree(os.path.join(workdir, SUBMISSION_DIR), ignore_errors=True)
    log.info("fine-tuning %s from %s; config:\n%s", spec.name, cfg.init_checkpoint, config_dict)

    optim = cfg.optim_for(num_steps)
    model = BertForSequenceClassification(model_config, spec.num_labels)
    tx = make_optimizer(optim, num_steps)
    schedule = learning_rate_schedule(optim, num_steps)
    train_keys = (*MODEL_INPUTS, LABEL)

    with mesh, nn.logical_axis_rules(rules):
        state, state_sharding, gather = init_from_checkpoint(
            model, tx, seq_len, cfg.seed, loaded, mesh, rules,
            source=cfg.init_checkpoint, head="classifier/",
        )  # fmt: skip
        replicated = NamedSharding(mesh, PartitionSpec())
        del loaded

        p_train = jax.jit(
            functools.partial(
                train_step,
                model=model,
                tx=tx,
                schedule=schedule,
                regression=spec.is_regression,
                grad_accum_steps=accum,
            ),
            in_shardings=(state_sharding, None),
            out_shardings=(state_sharding, None),
            donate_argnums=(0,),
        )
        p_predict = jax.jit(
            functools.partial(predict_step, model=model),
            in_shardings=(state_sharding.params, None),
            out_shardings=replicated,
        )

        def predict(params, data: SplitData) -> np.ndarray:
            return predict_logits(
                p_predict, params, data, mesh=mesh, rules=rules, batch_size=eval_batch
            )

        # The loop.
        writer = MetricWriter(workdir, resume_step=-1)  # a fresh metrics.jsonl
        rng = np.random.default_rng(cfg.seed)
        bar = tqdm(
            total=num_steps,
            desc=f"finetune {spec.name}",
            unit="step",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_params: Any = None
        window: list[dict[str, jax.Array]] = []
        step = 0
        results_base = {
            "task": spec.name,
            "init_checkpoint": cfg.init_checkpoint,
            "num_train_examples": train.size,
            "num_steps": num_steps,
            "config": config_to_json(config_dict),
        }
        for epoch in range(1, num_epochs + 1):
            for rows, n in batch_rows(rng.permutation(train.size), batch_size):
                if step == num_steps:
                    break
                batch = _process_rows(take(train.features, rows, n, train_keys))
                state, metrics = p_train(state, sharding.global_batch(mesh, rules, batch))
                window.append(metrics)
                step += 1
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == num_steps:
                    summary = _summarise(jax.device_get(window))
                    writer.write(step, {"epoch": epoch, **summary})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()})
                    window = []
            if not (cfg.train.eval_every_epoch or step == num_steps):
                continue
            logits = {d.split: predict(state.params, d) for d in evals}
            metrics, eval_losses = score_splits(spec.name, logits, evals)
            score = glue_metrics.task_score(spec.name, metrics)
            record = {"epoch": epoch, "step": step, "score": score, "metrics": metrics}
            history.append({**record, "losses": eval_losses})
            writer.write(step, {"epoch": epoch, "score": score, **metrics, **eval_losses}, "eval")
            if jax.process_index() == 0:
                shown = " ".join(f"{k}={v:.2f}" for k, v in metrics.items())
                tqdm.write(f"{spec.name} epoch {epoch} (step {step}): {shown} score={score:.2f}")
            if best is None or score > best["score"]:
                best = record
                best_params = jax.device_get(gather(state.params))
                if jax.process_index() == 0:
                    ckpt.save_model_dir(
                        os.path.join(workdir, BEST_DIR),
                        best_params,
                        model_config,
                        tokenizer=tokenizer,
                        source=f"finetune:{spec.name}:{cfg.init_checkpoint}",
                        task=task_metadata(spec),
                        overwrite=True,
                    )
            _write_json(
                os.path.join(workdir, RESULTS_FILE),
                _results(results_base, best, history, workdir, complete=False),
            )
        bar.close()
        nonfinite = int(state.nonfinite_steps)
        if nonfinite:
            log.warning("%s: %d update(s) skipped for non-finite values", spec.name, nonfinite)
        del state
        assert best is not None  # the last epoch always evaluates

        # Test predictions with the best parameters.
        params = jax.device_put(best_params, state_sharding.params)
        predictions: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        files: dict[str, str] = {}
        for data in tests:
            preds = predictions_from_logits(data.task, predict(params, data))
            index = data.features[glue_data.EXAMPLE_INDEX]
            predictions.setdefault(data.task, {})[data.split] = {
                "index": index,
                "prediction": preds,
            }
            if jax.process_index() == 0:
                path = glue_metrics.write_submission(
                    data.task, data.split, index, preds, os.path.join(workdir, SUBMISSION_DIR)
                )
                files[os.path.basename(path)] = path
    writer.close()

    results = _results(results_base, best, history, workdir, complete=True)
    results["submission_files"] = files
    results["nonfinite_steps"] = nonfinite
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
    return {**results, "predictions": predictions}


def _results(
    base: dict[str, Any],
    best: dict[str, Any] | None,
    history: list[dict[str, Any]],
    workdir: str,
    *,
    complete: bool,
    best_dir: str | None = None,
) -> dict[str, Any]:
    """The eval_results.json object: the run's config, every evaluation, and the best one
    (whose parameters are in `best_dir`, by default WORKDIR/best)."""
    out = dict(base, complete=complete, history=history)
    if best is not None:
        out.update(
            metrics=best["metrics"],
            score=best["score"],
            best_epoch=best["epoch"],
            best_step=best["step"],
            best_dir=best_dir or os.path.join(workdir, BEST_DIR),
        )
    return out


def _summarise(window: list[dict[str, Any]]) -> dict[str, float]:
    finite = [m for m in window if m["finite"] > 0] or window
    skip = ("learning_rate", "finite")
    out = {k: float(np.mean([m[k] for m in finite])) for k in finite[0] if k not in skip}
    out["learning_rate"] = float(window[-1]["learning_rate"])
    return out
