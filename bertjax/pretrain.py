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
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from bertjax import checkpoint as ckpt
from bertjax import flops, losses, sharding, storage
from bertjax.config import PretrainConfig
from bertjax.model import BertForPreTraining
from bertjax.optim import learning_rate_schedule, make_optimizer
from bertjax.trainer import (
    MetricWriter,
    NonFiniteError,
    Preempted,
    Preemption,
    TrainState,
    accumulate_gradients,
    apply_guarded_update,
    load_params_into_state,
    new_train_state,
    process_batch_block,
    restore_target,
    save_checkpoint,
    sync,
)

log = logging.getLogger(__name__)


# --- Data -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train_dir: str
    eval_dir: str
    tokenizer_path: str
    info: dict[str, Any]


def prepare_data(config: Any, workdir: str) -> PreparedData:
    """Shards to train on: config.data.train_dir, or data.corpus prepared into WORKDIR/data.

    Preparation (vocab training + example creation) runs once, on process 0; later runs
    and the other processes reuse it.
    """
    from data_pipelines.pretraining_data import load_dataset_info

    data = config.data
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
        _prepare_corpus(config, out, train_dir, eval_dir)
    sync("prepare_data")
    vocab = data.vocab or os.path.join(out, "vocab")
    has_eval = os.path.isfile(os.path.join(eval_dir, "dataset_info.json"))
    return PreparedData(
        train_dir, eval_dir if has_eval else data.eval_dir, vocab, load_dataset_info(train_dir)
    )


def _check_data_tokenizer(vocab: str, info: dict[str, Any], train_dir: str) -> None:
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
    if tokenizer.vocab_size != int(info["vocab_size"]):
        raise ValueError(
            f"{vocab}: a {tokenizer.vocab_size}-token vocab, but {train_dir} was prepared with "
            f"a {info['vocab_size']}-token one; pass the vocab the data was prepared with"
        )


def _prepare_corpus(config: Any, out: str, train_dir: str, eval_dir: str) -> None:
    from data_pipelines import corpus
    from data_pipelines.pretraining_data import create_pretraining_data
    from data_pipelines.tokenizers import load_tokenizer, train_vocab

    data = config.data
    os.makedirs(out, exist_ok=True)
    if data.corpus == "embedded":
        files = [os.path.join(out, "embedded_corpus.txt")]
        if not os.path.isfile(files[0]):
            log.info("writing the embedded corpus (Python's documentation) to %s", files[0])
            corpus.write_embedded_corpus(files[0])
    else:
        files = corpus.expand_input_files(data.corpus)
    # Hold out every n-th document for evaluation.
    split_train, split_eval = (
        os.path.join(out, "split_train.txt"),
        os.path.join(out, "split_eval.txt"),
    )
    every = round(1 / data.eval_fraction) if data.eval_fraction > 0 else 0
    docs = list(enumerate(corpus.iter_documents(files)))
    corpus.write_documents((d for i, d in docs if not every or i % every), split_train)
    if every:
        corpus.write_documents((d for i, d in docs if i % every == 0), split_eval)
    if data.vocab:
        tokenizer = load_tokenizer(data.vocab, do_lower_case=data.do_lower_case)
    else:
        vocab_dir = os.path.join(out, "vocab")
        if os.path.isdir(vocab_dir):
            tokenizer = load_tokenizer(vocab_dir)
        else:
            log.info("training a %d-token WordPiece vocab on %s", data.vocab_size, split_train)
            tokenizer = train_vocab(
                [split_train],
                kind="wordpiece",
                vocab_size=data.vocab_size,
                out_dir=vocab_dir,
                do_lower_case=data.do_lower_case,
            )
    common = dict(
        max_seq_length=data.max_seq_length,
        max_predictions_per_seq=data.max_predictions_per_seq,
        masked_lm_prob=data.masked_lm_prob,
        short_seq_prob=data.short_seq_prob,
        do_whole_word_mask=data.do_whole_word_mask,
        dynamic_masking=data.dynamic_masking,
        overwrite=True,
    )
    create_pretraining_data(
        [split_train],
        tokenizer,
        train_dir,
        dupe_factor=data.dupe_factor,
        random_seed=config.seed + 12345,
        **common,
    )
    if every:
        create_pretraining_data(
            [split_eval],
            tokenizer,
            eval_dir,
            dupe_factor=1,
            random_seed=config.seed + 54321,
            **common,
        )


def make_train_iterator(data: PreparedData, cfg: PretrainConfig, mesh: Any, rules: Any):
    """This process's rows of the training batches (`process_batch_block`)."""
    from data_pipelines.pretrain_input import make_pretrain_iterator

    index, count = process_batch_block(mesh, rules, cfg.train.batch_size)
    return make_pretrain_iterator(
        data.train_dir,
        global_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        shuffle=True,
        num_epochs=None,
        process_index=index,
        process_count=count,
        worker_count=cfg.data.num_workers,
        packing=cfg.data.packing,
        max_sequences_per_pack=cfg.data.max_sequences_per_pack,
    )


def make_eval_iterator(data: PreparedData, cfg: PretrainConfig, mesh: Any, rules: Any):
    """This process's rows of the evaluation batches (in record order)."""
    from data_pipelines.pretrain_input import make_pretrain_iterator

    index, count = process_batch_block(mesh, rules, cfg.train.batch_size)
    return make_pretrain_iterator(
        data.eval_dir,
        global_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        shuffle=False,
        num_epochs=None,
        process_index=index,
        process_count=count,
        worker_count=0,
        packing=cfg.data.packing,
        max_sequences_per_pack=cfg.data.max_sequences_per_pack,
    )


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
    out = model.apply({"params": params}, batch, train=False)
    mlm = losses.masked_lm_loss(
        out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
    )
    nsp = losses.pair_next_sentence_loss(out["nsp_logits"], batch["next_sentence_labels"])
    return {
        "mlm_loss_sum": mlm["loss_sum"],
        "mlm_correct_sum": mlm["correct_sum"],
        "mlm_weight_sum": mlm["weight_sum"],
        "nsp_loss_sum": nsp["loss_sum"],
        "nsp_correct_sum": nsp["correct_sum"],
        "nsp_weight_sum": nsp["weight_sum"],
    }


def train(
    config_dict: Any, workdir: str, *, devices: list[jax.Device] | None = None
) -> dict[str, float]:
    """Runs (or resumes) pre-training in `workdir`; returns the last logged metrics.

    `devices` restricts the mesh to a subset of devices (default: all of them).
    """
    workdir = storage.abspath(workdir)
    storage.check_writable(workdir)  # a missing bucket or no permission: before compiling
    sharding.check_shared_workdir(workdir)

    # Config and data.
    data = prepare_data(config_dict, workdir)
    # The embedding table: the init checkpoint's rows, else one row per token of the data.
    rows = int(data.info["vocab_size"])
    if config_dict.get("init_checkpoint"):
        rows = ckpt.load_model_config(str(config_dict.init_checkpoint))[0].vocab_size
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
    seq_len = int(data.info["max_seq_length"])
    num_pred = int(data.info["max_predictions_per_seq"])
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
        p_eval = jax.jit(functools.partial(eval_step, model=model))
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
        )


def _validate(cfg: PretrainConfig, data: PreparedData) -> None:
    """The data fits the model: every token id has an embedding row (the init checkpoint's
    table too), the init checkpoint was trained with the data's tokenizer, and the examples
    fit the position embeddings."""
    from data_pipelines.pretraining_data import load_dataset_info
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
                int(info["vocab_size"]), rows, vocab_source=source, model_source=model_source
            )
        ckpt.check_sequence_fits(
            cfg.model,
            max_seq_length=int(info["max_seq_length"]),
            num_segments=2,
            what=f"examples of length {info['max_seq_length']} in {directory}",
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
) -> dict[str, float]:
    start = int(state.step)
    writer = MetricWriter(workdir, start)
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
    with Preemption() as preemption:
        for step in range(start, cfg.train.num_steps):
            profile.before(step)
            batch = sharding.global_batch(mesh, rules, next(train_iter))
            state, metrics = p_train(state, batch)
            profile.after(step, metrics)
            window.append(metrics)
            done = step + 1
            bar.update(1)
            if done % cfg.train.log_every == 0 or done == cfg.train.num_steps:
                fetched = jax.device_get(window)
                elapsed = time.perf_counter() - window_start
                last = _summarise(fetched, elapsed, tokens_per_step, flops_per_step, total_peak)
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                last["nonfinite_steps"] = float(seen_nonfinite)
                writer.write(done, last)
                bar.set_postfix(
                    loss=f"{last['loss']:.3f}",
                    mlm_acc=f"{last['mlm_accuracy']:.3f}",
                    tok_s=f"{last['tokens_per_sec']:.0f}",
                    mfu=f"{last['mfu']:.1%}",
                )
                window, window_start = [], time.perf_counter()
            if data.eval_dir and (done % cfg.train.eval_every == 0 or done == cfg.train.num_steps):
                ev = evaluate(cfg, mesh, rules, state.params, p_eval, data)
                writer.write(done, ev, split="eval")
                last.update({f"eval_{k}": v for k, v in ev.items()})
                if jax.process_index() == 0:
                    tqdm.write(
                        f"step {done}: eval " + " ".join(f"{k}={v:.4f}" for k, v in ev.items())
                    )
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.num_steps:
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                save_checkpoint(checkpointer, done, state, train_iter)
            elif preemption.check():
                seen_nonfinite = _check_nonfinite(cfg, state, done, seen_nonfinite)
                save_checkpoint(checkpointer, done, state, train_iter, force=True)
                checkpointer.wait()
                bar.close()
                writer.close()
                raise Preempted(done)
    checkpointer.wait()
    bar.close()
    writer.close()
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

    Also reports `mlm_majority_baseline`: the accuracy of always predicting the most
    frequent masked token of these batches (this process's rows), the bar a model that
    learned nothing about context would reach.
    """
    it = make_eval_iterator(data, cfg, mesh, rules)
    sums: dict[str, float] = {}
    token_counts = np.zeros(cfg.model.vocab_size, np.float64)
    for _ in range(cfg.train.eval_steps):
        local = next(it)
        np.add.at(
            token_counts, local["masked_lm_ids"].reshape(-1), local["masked_lm_weights"].reshape(-1)
        )
        out = jax.device_get(p_eval(params, sharding.global_batch(mesh, rules, local)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    mlm_w, nsp_w = max(sums["mlm_weight_sum"], 1e-5), max(sums["nsp_weight_sum"], 1e-5)
    return {
        "loss": sums["mlm_loss_sum"] / mlm_w + sums["nsp_loss_sum"] / nsp_w,
        "mlm_loss": sums["mlm_loss_sum"] / mlm_w,
        "mlm_accuracy": sums["mlm_correct_sum"] / mlm_w,
        "nsp_loss": sums["nsp_loss_sum"] / nsp_w,
        "nsp_accuracy": sums["nsp_correct_sum"] / nsp_w,
        "mlm_majority_baseline": float(token_counts.max() / max(token_counts.sum(), 1e-5)),
    }
