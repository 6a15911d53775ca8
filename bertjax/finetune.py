"""The downstream fine-tuning engine, on a device mesh; tasks plug in (GLUE in glue_task.py,
SQuAD in squad.py, NER in ner.py) through the interface of finetune_task.py.

`finetune(family, config, workdir)` reads like pretrain.py: config -> checkpoint and tokenizer
-> the task and its data -> mesh -> model and optimizer -> sharded state -> restore -> loop
(train, evaluate each epoch, keep the best) -> the task's final outputs with the best
parameters. `evaluate_checkpoint(family, config, workdir)` scores a fine-tuned checkpoint
instead (what `train.num_epochs=0` runs). The caller names the task family (`glue_task.FAMILY`,
`squad.FAMILY`, `ner.FAMILY`); `tasks.task_family` picks it from `config.task.name` for
callers that take any config (`bertjax finetune`, `tasks.finetune`). A run writes

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
    and the task's files (GLUE: WORKDIR/submission/; SQuAD: predictions; NER: CoNLL files).

Batches (finetune_batching.py): `train.batch_size` rows each, cut to bucket lengths
(`data.bucket_multiple`) or packed several examples a row (`data.packing`, GLUE); the training
batches of an epoch are a pure function of (seed, epoch). The state (finetune_state.py): the
encoder of `init_checkpoint` (and the task's head when evaluating a fine-tuned checkpoint),
the rest fresh.

Resume: a run restarted on its workdir continues from the newest checkpoint: the train
state, the position in the loop (epoch, batch) and the best-so-far record. Killed at any
point and restarted, it ends with bit-identical parameters, dev metrics and predictions; a
finished run restarted has nothing to do. SIGTERM or Ctrl-C (SIGINT) saves a checkpoint and
raises `trainer.Preempted` (the CLI exits 143 or 130); a second Ctrl-C stops at once. One run
at a time in a workdir (`storage.workdir_lock`).

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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import sharding, storage, trainer
from bertjax.config import ModelConfig
from bertjax.finetune_batching import WEIGHT, Batching, bucketing_figures
from bertjax.finetune_state import (
    checkpoint_params,
    gatherer,
    init_from_checkpoint,
    load_checkpoint,
    sharded_state,
    state_from_loaded,
)
from bertjax.finetune_task import (
    MODEL_INPUTS,
    Evaluation,
    Objective,
    Predict,
    RunConfig,
    SequenceObjective,
    Split,
    Task,
    TaskFamily,
)
from bertjax.model import stack_layers
from bertjax.optim import learning_rate_schedule, make_optimizer
from bertjax.trainer import TrainState
from data_pipelines import bucketing

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
BEST_DIR = "best"
CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG_FILE = "run_config.json"


# --- Optimizer and steps --------------------------------------------------------------------------


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
    """`tx` for the top-level parameter groups other than `frozen`; those get no update (not
    even weight decay) and no optimizer state. A task lists its frozen groups in `frozen`."""
    if not frozen:
        return tx
    labels = lambda params: {k: "frozen" if k in frozen else "train" for k in params}  # noqa: E731
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


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


# --- Files --------------------------------------------------------------------------------------


def _write_run_file(workdir: str, name: str, value: Any) -> None:
    """WORKDIR/name (eval_results.json, run_config.json) as JSON through storage's one writer
    (atomic), on process 0 only."""
    if jax.process_index() == 0:
        storage.write_json(os.path.join(workdir, name), value, ensure_ascii=False)


def _read_json(path: str) -> Any:
    """The JSON value of `path`, or None when it is missing or unreadable."""
    try:
        return storage.read_json(path)
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


def _prepare(family: TaskFamily, config_dict: Any, *, training: bool, devices) -> _Prepared:
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
    family: TaskFamily,
    config_dict: Any,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """Fine-tunes on the task of `config_dict`, of `family` (`glue_task.FAMILY`,
    `squad.FAMILY`, `ner.FAMILY`), in `workdir`, resuming from its checkpoints (see the module
    doc for what it writes); `train.num_epochs=0` runs `evaluate_checkpoint` instead.

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
    readers' errors before anything is written; trainer.Preempted after a SIGTERM/SIGINT
    checkpoint; storage.WorkdirInUseError when another run holds the workdir.
    """
    evaluate_only = family.parse(config_dict).train.num_epochs == 0  # a bad config: first
    # One run at a time in a workdir: another run holding it is storage.WorkdirInUseError.
    with storage.workdir_lock(workdir, primary=jax.process_index() == 0):
        if evaluate_only:
            return evaluate_checkpoint(family, config_dict, workdir, devices=devices)
        return _train(family, config_dict, workdir, devices)


def evaluate_checkpoint(
    family: TaskFamily,
    config_dict: Any,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """Scores a fine-tuned checkpoint (`config.init_checkpoint`, which must hold the task's
    head) on the task's dev splits and writes the task's outputs (GLUE test predictions,
    SQuAD prediction files) in `workdir`; nothing is trained. Returns the results as
    `finetune` does, with one evaluation (epoch 0, step 0), `num_steps` 0 and `best_dir` the
    checkpoint itself. Raises as `finetune`."""
    run = _prepare(family, config_dict, training=False, devices=devices)
    cfg, task, mesh, rules = run.cfg, run.task, run.mesh, run.rules
    log.info("%s: evaluating %s; %s", task.name, cfg.init_checkpoint, task.describe())

    workdir = storage.abspath(workdir)
    config_json = config_to_json(config_dict)
    finished_run(workdir, config_json)  # another config's finished run is refused
    storage.makedirs(workdir)
    _write_run_file(workdir, RUN_CONFIG_FILE, config_json)
    _write_run_file(workdir, RESULTS_FILE, {"task": task.name, "complete": False})
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
    _write_run_file(workdir, RESULTS_FILE, out)
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


def _train(family: TaskFamily, config_dict: Any, workdir: str, devices) -> dict[str, Any]:
    # A finished run of this config has nothing to do; checkpoints of another are an error.
    family.parse(config_dict)  # a bad config fails before the workdir is read
    workdir = storage.abspath(workdir)
    config_json = config_to_json(config_dict)
    status, done = _workdir_status(workdir, config_json)
    if status == "complete":
        log.info("%s holds the finished run of this config; nothing to do", workdir)
        return {**done, "already_complete": True}

    run = _prepare(family, config_dict, training=True, devices=devices)
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
    _write_run_file(workdir, RUN_CONFIG_FILE, config_json)
    log.info("fine-tuning %s from %s; config:\n%s", task.name, cfg.init_checkpoint, config_dict)

    optim = cfg.optim_for(num_steps)
    tx = freeze(make_optimizer(optim, num_steps), getattr(task, "frozen", ()))
    schedule = learning_rate_schedule(optim, num_steps)
    train_keys = (*MODEL_INPUTS, *task.targets)
    best_dir = os.path.join(workdir, BEST_DIR)
    seq_len = cfg.task.max_seq_length

    with mesh, nn.logical_axis_rules(rules):
        abstract, state_sharding, init_jit, seed_key = sharded_state(
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
                state = state_from_loaded(
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
    _write_run_file(workdir, RESULTS_FILE, out)
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
        self.gather = gatherer(self.mesh, self.state_sharding)
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
        _write_run_file(self.workdir, RESULTS_FILE, self.results(complete=False))
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
                            raise preemption.stopped(step)
                    if cfg.train.eval_every_epoch or step == self.num_steps:
                        if preemption.check():
                            self.save(step, state, epoch, len(batches), force=True)
                            raise preemption.stopped(step)
                        self.evaluate(state, epoch, step, writer)
                        bar.update(step - bar.n)
                    if step % cfg.train.checkpoint_every == 0 or step == self.num_steps:
                        self.save(step, state, epoch + 1, 0)
                    elif preemption.check():
                        self.save(step, state, epoch + 1, 0, force=True)
                        raise preemption.stopped(step)
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
        _write_run_file(self.workdir, RESULTS_FILE, self.results(complete=False))
