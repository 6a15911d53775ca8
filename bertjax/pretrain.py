"""BERT pre-training (masked LM + next-sentence prediction) on a device mesh.

Reads top to bottom: config -> data -> mesh -> model and optimizer -> sharded state ->
restore -> loop. The same code runs on one CPU, a GPU, or every host of a TPU pod slice.

Determinism: the dropout key of step s is fold_in(seed key, s) and the data iterator's
state is saved with every checkpoint, so a run killed at any point and restarted ends
with the same parameters as one that never stopped (same config, same devices). Each
global batch holds the same examples in the same rows whatever the number of processes
(each reads the block of rows its devices hold, `process_batch_block`), so the dropout
masks, hashes of the global element index, are the same too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import flops, losses, sharding, storage
from bertjax.model import BertForPreTraining
from bertjax.optim import learning_rate_schedule, make_optimizer
from bertjax.pretrain_config import PretrainConfig
from bertjax.trainer import (
    MetricWriter,
    NonFiniteError,
    Preemption,
    TrainState,
    accumulate_gradients,
    apply_guarded_update,
    flat_hparams,
    load_params_into_state,
    new_train_state,
    process_batch_block,
    restore_target,
    save_checkpoint,
    sync,
)
from data_pipelines.records import DatasetInfo, load_dataset_info

log = logging.getLogger(__name__)


# --- Data -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train_dir: str
    eval_dir: str
    tokenizer_path: str
    info: DatasetInfo


def prepare_data(cfg: PretrainConfig, workdir: str) -> PreparedData:
    """Shards to train on: cfg.data.train_dir, or data.corpus prepared into WORKDIR/data
    (`data_pipelines.prepare.prepare_corpus`).

    Preparation (vocab training + example creation) runs once, on process 0; later runs
    and the other processes reuse it.
    """
    data = cfg.data
    if data.train_dir:
        info = load_dataset_info(data.train_dir)
        vocab = data.vocab or data.train_dir
        _check_data_tokenizer(vocab, info, data.train_dir)
        return PreparedData(data.train_dir, data.eval_dir, vocab, info)
    if storage.is_remote(workdir):
        raise storage.StorageError(
            f"{workdir}: a bucket workdir needs prepared data on a local or mounted path "
            "(`bertjax prepare`, then --config.data.train_dir=DIR); the ArrayRecord reader "
            f"cannot stream from a bucket: {storage.FUSE_RECIPE}"
        )
    out = os.path.join(workdir, "data")
    train_dir, eval_dir = os.path.join(out, "train"), os.path.join(out, "eval")
    if jax.process_index() == 0 and not os.path.isfile(
        os.path.join(train_dir, "dataset_info.json")
    ):
        from data_pipelines.prepare import prepare_corpus

        storage.remove_stale_temps(out)  # an earlier run's, killed mid-way (the lock is held)
        prepare_corpus(
            data.corpus,
            out,
            vocab=data.vocab,
            vocab_size=data.vocab_size,
            do_lower_case=data.do_lower_case,
            eval_fraction=data.eval_fraction,
            max_seq_length=data.max_seq_length,
            max_predictions_per_seq=data.max_predictions_per_seq,
            masked_lm_prob=data.masked_lm_prob,
            dupe_factor=data.dupe_factor,
            short_seq_prob=data.short_seq_prob,
            do_whole_word_mask=data.do_whole_word_mask,
            dynamic_masking=data.dynamic_masking,
            seed=cfg.seed,
        )
    sync("prepare_data")
    vocab = data.vocab or os.path.join(out, "vocab")
    has_eval = os.path.isfile(os.path.join(eval_dir, "dataset_info.json"))
    return PreparedData(
        train_dir, eval_dir if has_eval else data.eval_dir, vocab, load_dataset_info(train_dir)
    )


def _check_data_tokenizer(vocab: str, info: DatasetInfo, train_dir: str) -> None:
    """The tokenizer that goes into the workdir is the one the data was made with
    (`bertjax prepare` stores it in the dataset directory)."""
    from data_pipelines.tokenizers import load_tokenizer

    try:
        tokenizer = load_tokenizer(vocab)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{train_dir}: the dataset holds no tokenizer ({e}); pass the vocab it was "
            "prepared with as --config.data.vocab=PATH"
        ) from None
    if tokenizer.vocab_size != int(info.vocab_size):
        raise ValueError(
            f"{vocab}: a {tokenizer.vocab_size}-token vocab, but {train_dir} was prepared with "
            f"a {info.vocab_size}-token one; pass the vocab the data was prepared with"
        )


def _iterator(data_dir: str, cfg: PretrainConfig, mesh: Any, rules: Any, *, train: bool):
    from data_pipelines.pretrain_input import make_pretrain_iterator

    index, count = process_batch_block(mesh, rules, cfg.train.batch_size)
    return make_pretrain_iterator(
        data_dir,
        global_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        shuffle=train,
        num_epochs=None,
        process_index=index,
        process_count=count,
        worker_count=cfg.data.num_workers if train else 0,
        packing=cfg.data.packing,
        max_sequences_per_pack=cfg.data.max_sequences_per_pack,
    )


def make_train_iterator(data: PreparedData, cfg: PretrainConfig, mesh: Any, rules: Any):
    """This process's rows of the training batches (`process_batch_block`), shuffled."""
    return _iterator(data.train_dir, cfg, mesh, rules, train=True)


def make_eval_iterator(data: PreparedData, cfg: PretrainConfig, mesh: Any, rules: Any):
    """This process's rows of the evaluation batches (in record order, in this process)."""
    return _iterator(data.eval_dir, cfg, mesh, rules, train=False)


# --- Train and eval steps -----------------------------------------------------------------------


def init_state(
    seed_key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    seq_len: int,
    num_predictions: int,
    prng_impl: str | None = None,
) -> TrainState:
    """A fresh pre-training state (BertForPreTraining at this sequence length)."""
    batch = {
        "input_ids": jnp.zeros((1, seq_len), jnp.int32),
        "input_mask": jnp.ones((1, seq_len), jnp.int32),
        "segment_ids": jnp.zeros((1, seq_len), jnp.int32),
        "masked_lm_positions": jnp.zeros((1, num_predictions), jnp.int32),
    }
    return new_train_state(seed_key, model, tx, batch, prng_impl)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    prng_impl: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step over the global batch, accumulating `grad_accum_steps`
    micro-batches; a non-finite loss or gradient leaves params and optimizer untouched."""
    base_key = jax.random.wrap_key_data(state.rng, impl=prng_impl)
    step_key = jax.random.fold_in(base_key, state.step)
    mlm_den = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
    nsp_den = jnp.sum((batch["next_sentence_labels"] >= 0).astype(jnp.float32))

    def loss_fn(params, micro, key):
        out = model.apply({"params": params}, micro, train=True, rngs={"dropout": key})
        return losses.pretraining_loss(
            out["mlm_logits"],
            out["nsp_logits"],
            micro,
            mlm_denominator=mlm_den,
            nsp_denominator=nsp_den,
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    grads, metrics = accumulate_gradients(grad_fn, state.params, batch, step_key, grad_accum_steps)
    new_state, grad_norm, finite = apply_guarded_update(state, grads, metrics["loss"], tx)
    metrics = dict(
        metrics,
        real_tokens=jnp.sum(batch["input_mask"].astype(jnp.float32)),
        grad_norm=grad_norm,
        learning_rate=schedule(state.step),
        finite=finite.astype(jnp.float32),
    )
    return new_state, metrics


def eval_step(
    params: Any, batch: dict[str, jax.Array], *, model: nn.Module
) -> dict[str, jax.Array]:
    """Sums over one batch: losses, correct predictions, and the weight of each masked
    token id (`masked_token_counts` [V]) and NSP label (`nsp_label_counts` [2]), which the
    majority baselines of `evaluate` count."""
    out = model.apply({"params": params}, batch, train=False)
    mlm = losses.masked_lm_loss(
        out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
    )
    nsp = losses.pair_next_sentence_loss(out["nsp_logits"], batch["next_sentence_labels"])
    ids = batch["masked_lm_ids"].reshape(-1)  # [B * P]
    weights = batch["masked_lm_weights"].reshape(-1).astype(jnp.float32)
    labels = batch["next_sentence_labels"].reshape(-1)  # -1: no pair (packed rows)
    vocab = out["mlm_logits"].shape[-1]
    return {
        "mlm_loss_sum": mlm["loss_sum"],
        "mlm_correct_sum": mlm["correct_sum"],
        "mlm_weight_sum": mlm["weight_sum"],
        "nsp_loss_sum": nsp["loss_sum"],
        "nsp_correct_sum": nsp["correct_sum"],
        "nsp_weight_sum": nsp["weight_sum"],
        "masked_token_counts": jnp.zeros((vocab,), jnp.float32).at[ids].add(weights),  # [V]
        "nsp_label_counts": jnp.stack([jnp.sum(labels == 0), jnp.sum(labels == 1)]).astype(
            jnp.float32
        ),  # [2]: actual next, random next
    }


def train(
    config_dict: Any, workdir: str, *, devices: list[jax.Device] | None = None
) -> dict[str, float]:
    """Runs (or resumes) pre-training in `workdir`; returns the last logged metrics.

    `devices` restricts the mesh to a subset of devices (default: all of them). One run at a
    time in a workdir: another run holding it is storage.WorkdirInUseError.
    """
    with storage.workdir_lock(workdir, primary=jax.process_index() == 0):
        return _train(config_dict, workdir, devices=devices)


def _train(
    config_dict: Any, workdir: str, *, devices: list[jax.Device] | None = None
) -> dict[str, float]:
    started = time.perf_counter()
    workdir = storage.abspath(workdir)
    storage.check_writable(workdir)  # a missing bucket or no permission: before compiling
    sharding.check_shared_workdir(workdir)

    # Config, then data: a bad key or value stops the run before anything is prepared.
    cfg = PretrainConfig.from_config_dict(config_dict)
    data = prepare_data(cfg, workdir)
    # The embedding table (config.model.vocab_size None): the init checkpoint's rows, else
    # one row per token of the data.
    rows = int(data.info.vocab_size)
    if cfg.init_checkpoint:
        rows = ckpt.load_model_config(cfg.init_checkpoint)[0].vocab_size
    cfg = PretrainConfig.from_config_dict(config_dict, vocab_size=rows)
    _validate(cfg, data)
    ckpt.check_workdir_model(workdir, cfg.model)

    # Mesh, model, optimizer.
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    sharding.check_divisible(cfg.train.batch_size, mesh, rules, what="config.train.batch_size")
    if cfg.train.batch_size % (
        cfg.optim.grad_accum_steps * sharding.data_parallel_size(mesh, rules)
    ):
        raise ValueError(
            f"config.train.batch_size={cfg.train.batch_size} must split into "
            f"grad_accum_steps={cfg.optim.grad_accum_steps} micro-batches, each divisible by the "
            f"data-parallel size {sharding.data_parallel_size(mesh, rules)}"
        )
    model = BertForPreTraining(cfg.model)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    schedule = learning_rate_schedule(cfg.optim, cfg.train.num_steps)
    seq_len = int(data.info.max_seq_length)
    num_pred = int(data.info.max_predictions_per_seq)
    if cfg.data.packing:
        from data_pipelines.pretrain_input import packed_shapes

        seq_len, num_pred = packed_shapes(data.info, cfg.data.max_sequences_per_pack)

    # Sharded state: eval_shape -> partition specs -> jit(init, out_shardings).
    with mesh, nn.logical_axis_rules(rules):
        impl = cfg.train.prng_impl
        seed_key = jax.random.key_data(jax.random.key(cfg.seed, impl=impl))
        init_fn = functools.partial(
            init_state,
            model=model,
            tx=tx,
            seq_len=seq_len,
            num_predictions=num_pred,
            prng_impl=impl,
        )
        abstract, state_sharding, init_jit = sharding.sharded_init(init_fn, seed_key, mesh, rules)

        checkpointer = ckpt.TrainCheckpointer(
            storage.join(workdir, "checkpoints"),
            keep=cfg.train.keep_checkpoints,
            async_save=cfg.train.async_checkpointing,
        )
        target = restore_target(abstract, state_sharding)
        try:
            restored, train_iter = checkpointer.restore_latest(
                target, lambda: make_train_iterator(data, cfg, mesh, rules)
            )
        except BaseException:
            checkpointer.close()
            raise
        if restored is not None:
            state = restored
            log.info("resumed from step %d in %s", int(state.step), workdir)
        else:
            state = init_jit(seed_key)
            if cfg.init_checkpoint:
                state = _load_init_checkpoint(cfg, state, state_sharding)
        ckpt.write_workdir_files(workdir, cfg, config_dict, data.tokenizer_path)

        p_train = jax.jit(
            functools.partial(
                train_step,
                model=model,
                tx=tx,
                schedule=schedule,
                grad_accum_steps=cfg.optim.grad_accum_steps,
                prng_impl=impl,
            ),
            in_shardings=(state_sharding, None),
            out_shardings=(state_sharding, None),
            donate_argnums=(0,),
        )
        p_eval = jax.jit(  # sums, replicated: every process reads them whole
            functools.partial(eval_step, model=model),
            out_shardings=NamedSharding(mesh, PartitionSpec()),
        )
        return _loop(
            cfg,
            workdir,
            mesh,
            rules,
            state,
            p_train,
            p_eval,
            checkpointer,
            train_iter,
            data,
            seq_len,
            num_pred,
            started=started,
            config_json=json.loads(config_dict.to_json()),
        )


def _validate(cfg: PretrainConfig, data: PreparedData) -> None:
    """The data fits the model: every token id has an embedding row (the init checkpoint's
    table too), the init checkpoint was trained with the data's tokenizer, and the examples
    fit the position embeddings."""
    from data_pipelines.tokenizers import load_tokenizer

    infos = [(data.train_dir, data.info)]
    if data.eval_dir and storage.isfile(storage.join(data.eval_dir, "dataset_info.json")):
        infos.append((data.eval_dir, load_dataset_info(data.eval_dir)))
    tables = [(cfg.model.vocab_size, "config.model.vocab_size")]
    if cfg.init_checkpoint:  # named first: the config's table defaults to the checkpoint's
        init_config, _ = ckpt.load_model_config(cfg.init_checkpoint)
        tables.insert(
            0, (init_config.vocab_size, storage.join(cfg.init_checkpoint, ckpt.CONFIG_FILE))
        )
    for directory, info in infos:
        source = storage.join(directory, "dataset_info.json")
        for rows, model_source in tables:
            ckpt.check_vocab_fits(
                int(info.vocab_size), rows, vocab_source=source, model_source=model_source
            )
        ckpt.check_sequence_fits(
            cfg.model,
            max_seq_length=int(info.max_seq_length),
            num_segments=2,
            what=f"examples of length {info.max_seq_length} in {directory}",
            model_source="config.model",
        )
    if cfg.init_checkpoint and ckpt.has_tokenizer(cfg.init_checkpoint):
        ckpt.check_same_tokenizer(  # the checkpoint's rows were learned with its own ids
            load_tokenizer(data.tokenizer_path),
            ckpt.load_tokenizer_from(cfg.init_checkpoint),
            a_source=data.tokenizer_path,
            b_source=cfg.init_checkpoint,
        )


def _load_init_checkpoint(cfg: PretrainConfig, state: TrainState, state_sharding) -> TrainState:
    """Starts from an imported/converted checkpoint: its params, fresh optimizer state."""
    config, params, _ = ckpt.load_model_dir(cfg.init_checkpoint)
    diff = config.shape_differences(cfg.model)
    if diff:
        raise ValueError(
            f"config.init_checkpoint={cfg.init_checkpoint}: model shape differs "
            f"from the config (checkpoint, config): {diff}"
        )
    state, fresh = load_params_into_state(
        state,
        state_sharding,
        params,
        source=cfg.init_checkpoint,
        scan_layers=cfg.model.scan_layers,
        num_layers=cfg.model.num_layers,
    )
    if fresh:
        log.info("initialised fresh (not in %s): %s", cfg.init_checkpoint, fresh)
    return state


def _loop(
    cfg,
    workdir,
    mesh,
    rules,
    state,
    p_train,
    p_eval,
    checkpointer,
    train_iter,
    data,
    seq_len,
    num_pred,
    *,
    started: float,
    config_json: dict[str, Any] | None = None,
) -> dict[str, float]:
    from data_pipelines.pretrain_input import prefetch_to_device

    start = int(state.step)
    splits = ("train", "eval") if data.eval_dir else ("train",)
    writer = MetricWriter(
        workdir,
        start,
        config=config_json,
        hparams={
            **flat_hparams(cfg),
            "data.seq_len": seq_len,  # of the rows trained on (packed rows' when packing)
            "data.num_predictions": num_pred,
            "model.num_params": cfg.model.num_params(),
        },
        metrics=[f"{x}/{m}" for x in splits for m in ("loss", "mlm_accuracy", "nsp_accuracy")],
    )
    n_devices = mesh.devices.size
    peak, peak_source = flops.peak_flops_per_device()
    total_peak = peak if jax.devices()[0].platform == "cpu" else peak * n_devices
    flops_per_step = cfg.train.batch_size * flops.training_flops_per_sequence(
        cfg.model, seq_len, num_pred
    )
    tokens_per_step = cfg.train.batch_size * seq_len
    if jax.process_index() == 0:
        log.info(
            "model %s: %s parameters; mesh %s; peak %.3g FLOP/s (%s)",
            cfg.model_size,
            f"{cfg.model.num_params():,}",
            dict(mesh.shape),
            total_peak,
            peak_source,
        )
    bar = tqdm(
        total=cfg.train.num_steps,
        initial=start,
        desc="pretrain",
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    last: dict[str, float] = {}
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    seen_nonfinite = int(state.nonfinite_steps)
    profile = _Profiler(cfg.train, workdir)
    throughput = _Throughput()
    # The next batches go to the devices while a step runs; a checkpoint saves the data
    # position after the batches the steps took, not after those fetched ahead.
    train_iter = prefetch_to_device(
        train_iter, functools.partial(sharding.global_batch, mesh, rules)
    )
    with Preemption() as preemption:
        for step in range(start, cfg.train.num_steps):
            profile.before(step)
            batch = next(train_iter)
            state, metrics = p_train(state, batch)
            profile.after(step, metrics)
            window.append(metrics)
            done = step + 1
            # The bar advances where the host waits for the device (fetched metrics, an
            # evaluation, a checkpoint's check), by the steps done since: with asynchronous
            # dispatch a step returns before it runs, so counting returns would make the rate
            # and the ETA swing.
            if done % cfg.train.log_every == 0 or done == cfg.train.num_steps:
                fetched = jax.device_get(window)
                elapsed = time.perf_counter() - window_start
                last = _summarise(fetched, elapsed, tokens_per_step, flops_per_step, total_peak)
                throughput.add(len(fetched), elapsed)
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                last["nonfinite_steps"] = float(seen_nonfinite)
                writer.write(done, last)
                bar.set_postfix(
                    loss=f"{last['loss']:.3f}",
                    mlm_acc=f"{last['mlm_accuracy']:.1%}",
                    nsp_acc=f"{last['nsp_accuracy']:.1%}",
                    tok_s=f"{last['tokens_per_sec']:.0f}",
                    mfu=f"{last['mfu']:.1%}",
                    refresh=False,
                )
                bar.update(done - bar.n)
                window, window_start = [], time.perf_counter()
            if data.eval_dir and (done % cfg.train.eval_every == 0 or done == cfg.train.num_steps):
                ev = evaluate(cfg, mesh, rules, state.params, p_eval, data)
                writer.write(done, ev, split="eval")
                last.update({f"eval_{k}": v for k, v in ev.items()})
                bar.update(done - bar.n)
                if jax.process_index() == 0:
                    tqdm.write(f"step {done}: eval " + format_metrics(ev))
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.num_steps:
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                bar.update(done - bar.n)
                save_checkpoint(checkpointer, done, state, train_iter)
            elif preemption.check():
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                save_checkpoint(checkpointer, done, state, train_iter, force=True)
                checkpointer.wait()
                bar.close()
                writer.close()
                raise preemption.stopped(done)
    checkpointer.wait()
    bar.close()
    writer.close()
    if start < cfg.train.num_steps and jax.process_index() == 0:
        summary = run_summary(
            last,
            steps=cfg.train.num_steps,
            start_step=start,
            wall_seconds=time.perf_counter() - started,
            steps_per_sec=throughput.steps_per_sec(),
            tokens_per_step=tokens_per_step,
            flops_per_step=flops_per_step,
            peak=total_peak,
        )
        print(format_summary(summary, peak_source=peak_source), flush=True)
    if start < cfg.train.num_steps and cfg.eval.fill_mask_examples:
        show_fill_mask_examples(workdir, data, cfg.eval.fill_mask_examples)
    return last


class _Profiler:
    """Traces steps [profile_start, profile_start + profile_steps) with jax.profiler into
    WORKDIR/profile (TensorBoard's profile plugin or https://ui.perfetto.dev reads it)."""

    def __init__(self, train_cfg: Any, workdir: str):
        self.first = train_cfg.profile_start
        self.last = train_cfg.profile_start + train_cfg.profile_steps - 1
        self.enabled = train_cfg.profile_steps > 0
        self.logdir = storage.join(workdir, "profile")

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)

    def after(self, step: int, metrics: Any) -> None:
        if self.enabled and step == self.last:
            jax.block_until_ready(metrics)
            jax.profiler.stop_trace()
            log.info("profiled steps %d-%d into %s", self.first + 1, step + 1, self.logdir)


def _check_nonfinite(cfg: PretrainConfig, state: TrainState, step: int, seen: int) -> int:
    count = int(state.nonfinite_steps)
    if count > seen:
        msg = (
            f"non-finite loss or gradient: {count - seen} update(s) skipped up to step {step} "
            f"({count} in total)"
        )
        if cfg.train.nan_policy == "stop":
            raise NonFiniteError(
                msg + "; nan_policy='stop' (the last checkpoint holds the last good state)"
            )
        log.warning(msg)
        if count > cfg.train.max_nonfinite_steps:
            raise NonFiniteError(
                msg + f"; more than max_nonfinite_steps={cfg.train.max_nonfinite_steps}"
            )
    return count


# Metrics stored as fractions (metrics.jsonl, TensorBoard, the returned dict) and printed
# in percent: the accuracies, the majority baselines, MFU and the padding fraction.
_PERCENT = ("accuracy", "baseline", "mfu", "fraction")


def format_metrics(metrics: dict[str, float]) -> str:
    """`key=value ...` as printed for people: the fractions of `_PERCENT` in percent."""
    return " ".join(
        f"{k}={100 * v:.2f}%" if any(p in k for p in _PERCENT) else f"{k}={v:.4g}"
        for k, v in metrics.items()
    )


def _summarise(window, elapsed, tokens_per_step, flops_per_step, peak) -> dict[str, float]:
    finite = [m for m in window if m["finite"] > 0] or window
    keys = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "grad_norm")
    out = {k: float(np.mean([m[k] for m in finite])) for k in keys}
    out["learning_rate"] = float(window[-1]["learning_rate"])
    steps_per_sec = len(window) / max(elapsed, 1e-9)
    out["tokens_per_sec"] = tokens_per_step * steps_per_sec
    real_tokens = float(np.mean([m["real_tokens"] for m in window]))
    out["real_tokens_per_sec"] = real_tokens * steps_per_sec  # without padding
    out["padding_fraction"] = 1.0 - real_tokens / tokens_per_step
    out["mfu"] = flops_per_step * steps_per_sec / peak if peak == peak else float("nan")
    return out


def evaluate(cfg, mesh, rules, params, p_eval, data) -> dict[str, float]:
    """MLM and NSP loss/accuracy over the first eval_steps batches of the held-out shards.

    Also reports the majority baselines of these batches (all processes' rows):
    `mlm_majority_baseline`, the accuracy of always predicting their most frequent masked
    token, the bar a model that learned nothing about context would reach; and
    `nsp_majority_baseline`, that of always answering their more frequent NSP label (not
    always 50%: a document too short for a second segment gets a random next one).
    """
    it = make_eval_iterator(data, cfg, mesh, rules)
    sums: dict[str, Any] = {}
    for _ in range(cfg.train.eval_steps):
        batch = sharding.global_batch(mesh, rules, next(it))
        for k, v in jax.device_get(p_eval(params, batch)).items():
            sums[k] = sums[k] + np.asarray(v, np.float64) if k in sums else np.float64(v)
    mlm_w, nsp_w = max(sums["mlm_weight_sum"], 1e-5), max(sums["nsp_weight_sum"], 1e-5)
    tokens, labels = sums["masked_token_counts"], sums["nsp_label_counts"]
    return {
        "loss": float(sums["mlm_loss_sum"] / mlm_w + sums["nsp_loss_sum"] / nsp_w),
        "mlm_loss": float(sums["mlm_loss_sum"] / mlm_w),
        "mlm_accuracy": float(sums["mlm_correct_sum"] / mlm_w),
        "nsp_loss": float(sums["nsp_loss_sum"] / nsp_w),
        "nsp_accuracy": float(sums["nsp_correct_sum"] / nsp_w),
        "mlm_majority_baseline": float(tokens.max() / max(tokens.sum(), 1e-5)),
        "nsp_majority_baseline": float(labels.max() / max(labels.sum(), 1e-5)),
    }


# --- End of run: the summary, fill-mask examples -----------------------------------------------


class _Throughput:
    """Steps per second over the logged windows of a run, the first one (compilation)
    left out when there are others; evaluation and checkpoint time stay in."""

    def __init__(self):
        self.windows: list[tuple[int, float]] = []

    def add(self, steps: int, seconds: float) -> None:
        self.windows.append((steps, seconds))

    def steps_per_sec(self) -> float:
        timed = self.windows[1:] or self.windows
        steps, seconds = sum(n for n, _ in timed), sum(t for _, t in timed)
        return steps / seconds if seconds > 0 else float("nan")


def run_summary(
    last: dict[str, float],
    *,
    steps: int,
    start_step: int,
    wall_seconds: float,
    steps_per_sec: float,
    tokens_per_step: int,
    flops_per_step: float,
    peak: float,
) -> dict[str, float]:
    """The figures of the end-of-run summary; `last` is the loop's last metrics (eval_*
    from the final evaluation, absent without held-out data)."""
    out = {
        "steps": float(steps),
        "start_step": float(start_step),
        "wall_seconds": wall_seconds,
        "tokens_per_sec": tokens_per_step * steps_per_sec,
        "mfu": flops_per_step * steps_per_sec / peak if peak == peak else float("nan"),
        "peak_flops": peak,
    }
    for key in (
        "eval_mlm_accuracy",
        "eval_mlm_majority_baseline",
        "eval_nsp_accuracy",
        "eval_nsp_majority_baseline",
    ):
        if key in last:
            out[key] = last[key]
    return out


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def format_summary(summary: dict[str, float], *, peak_source: str = "") -> str:
    """A few aligned lines: steps, wall time, tokens/s, MFU and the held-out accuracies
    against their majority baselines."""
    steps, start = int(summary["steps"]), int(summary["start_step"])
    peak = f"{summary['peak_flops']:.3g} FLOP/s" + (f" ({peak_source})" if peak_source else "")
    rows = [
        ("steps", f"{steps:,}" + (f" (resumed at step {start:,})" if start else "")),
        ("wall time", _duration(summary["wall_seconds"]) + " (data and compilation included)"),
        ("tokens/s", f"{summary['tokens_per_sec']:,.0f}"),
        ("MFU", f"{summary['mfu']:.1%} of {peak}"),
    ]
    if "eval_mlm_accuracy" in summary:
        rows += [
            (
                "eval MLM accuracy",
                f"{summary['eval_mlm_accuracy']:.1%} (majority baseline "
                f"{summary['eval_mlm_majority_baseline']:.1%})",
            ),
            (
                "eval NSP accuracy",
                f"{summary['eval_nsp_accuracy']:.1%} (majority baseline "
                f"{summary['eval_nsp_majority_baseline']:.1%}, chance 50%)",
            ),
        ]
    else:
        rows.append(("eval", "none (no held-out data)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["summary:"] + [f"  {k:<{width}}  {v}" for k, v in rows])


# Function words never masked in the fill-mask examples (shorter words are left out anyway).
_FUNCTION_WORDS = frozenset(
    """about above after again also because been before being below between both could does
    each either from have into itself many more most much must neither only other over same
    should some such than that their them then there these they this those through under
    until very were what when where which while will with within without would your""".split()
)
_EDGE_PUNCTUATION = "\"'()[]{}<>,.;:!?*`"


def fill_mask_sentences(
    documents: Any, tokenizer: Any, count: int, *, max_tokens: int, max_sentences: int = 5000
) -> list[tuple[str, str]]:
    """`count` (text with one [MASK], the masked word) pairs from held-out documents (their
    first `max_sentences` sentences).

    A sentence qualifies when it reads as prose: 8 to 40 words, at least 80% of them
    alphabetic (edge punctuation aside), ending with a full stop, at most `max_tokens`
    tokens. Its masked word is a content word: alphabetic, 4 letters or more, not a function
    word, one token of the vocabulary (so one [MASK] stands for it); of those, the most
    frequent in these documents (the words of their subject, not a rare name), the one
    nearest the middle of the sentence on a tie. The qualifying sentences are taken evenly
    spaced, in corpus order: the same documents always give the same examples.
    """
    sentences = [s for d in documents for s in d][:max_sentences]
    cores = [[w.strip(_EDGE_PUNCTUATION) for w in s.split()] for s in sentences]
    frequency: dict[str, int] = {}
    for words in cores:
        for w in words:
            frequency[w.lower()] = frequency.get(w.lower(), 0) + 1
    mask = tokenizer.convert_ids_to_tokens([tokenizer.mask_id])[0]
    candidates = []
    for sentence, core in zip(sentences, cores, strict=True):
        words = sentence.split()
        if not 8 <= len(words) <= 40 or not sentence.endswith("."):
            continue
        if sum(c.isalpha() for c in core) < 0.8 * len(words):
            continue
        if len(tokenizer.encode(sentence)) > max_tokens:
            continue
        content = [
            i
            for i, c in enumerate(core)
            if c.isalpha()
            and c.isascii()
            and len(c) >= 4
            and c.lower() not in _FUNCTION_WORDS
            and len(tokenizer.tokenize(c)) == 1
        ]
        if not content:
            continue
        i = min(
            content, key=lambda j: (-frequency[core[j].lower()], abs(2 * j - len(words) + 1), j)
        )
        masked = words[:i] + [words[i].replace(core[i], mask, 1)] + words[i + 1 :]
        candidates.append((" ".join(masked), core[i]))
    if not candidates or count <= 0:
        return []
    count = min(count, len(candidates))
    return [candidates[(2 * k + 1) * len(candidates) // (2 * count)] for k in range(count)]


def held_out_text_files(data: PreparedData) -> list[str]:
    """The text files the held-out shards were prepared from (their dataset_info.json's
    input_files), or [] when there are none to read."""
    if not data.eval_dir or not storage.isfile(storage.join(data.eval_dir, "dataset_info.json")):
        return []
    files = load_dataset_info(data.eval_dir).input_files
    return [f for f in files if storage.isfile(f)]


def show_fill_mask_examples(workdir: str, data: PreparedData, count: int) -> None:
    """Prints the top 5 of `bertjax.load(workdir).fill_mask` for `count` held-out sentences
    (`fill_mask_sentences`), process 0 only; a one-line notice when there are none."""
    if jax.process_index() != 0:
        return
    from data_pipelines import corpus

    files = held_out_text_files(data)
    if jax.process_count() > 1 or not files:
        why = "a multi-process run" if files else "no held-out text beside the eval shards"
        print(f"fill-mask examples: none ({why}); try bertjax.load(WORKDIR).fill_mask(...)")
        return
    from bertjax import api

    lm = api.load(workdir)
    max_tokens = min(int(data.info.max_seq_length), lm.max_seq_length) - 2
    examples = fill_mask_sentences(
        corpus.iter_documents(files), lm.tokenizer, count, max_tokens=max_tokens
    )
    if not examples:
        print("fill-mask examples: none (no held-out sentence qualifies)")
        return
    print(f"fill-mask, held-out sentences (bertjax.load({workdir!r}).fill_mask, top 5):")
    results = lm.fill_mask([text for text, _ in examples], top_k=5)
    for n, ((text, word), top) in enumerate(zip(examples, results, strict=True), 1):
        guesses = [r["token"] for r in top]
        answer = lm.tokenizer.encode(word)[0]
        rank = f"rank {guesses.index(answer) + 1}" if answer in guesses else "not in the top 5"
        print(f"  {n}. {text}")
        print(
            f"     {word!r} ({rank}): "
            + ", ".join(f"{r['token_str']} {r['score']:.2f}" for r in top)
        )
