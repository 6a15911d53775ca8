"""What the training loops share (bertjax/trainer.py): the metric writer across restarts, the
loop state saved beside the train state, SIGTERM as a flag, and the guarded update."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax import checkpoint as ckpt
from bertjax import pretrain, sharding, trainer
from data_pipelines import features as F


def _records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _state(step: int, params, tx) -> trainer.TrainState:
    """A train state at `step` with `tx`'s fresh optimizer state and no non-finite steps."""
    return trainer.TrainState(
        step=jnp.array(step, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jnp.zeros(2, jnp.uint32),
        nonfinite_steps=jnp.array(0, jnp.int32),
    )


def test_metric_writer_drops_what_a_restart_computes_again(tmp_path):
    work = str(tmp_path)
    w = trainer.MetricWriter(work, resume_step=-1)
    for step in (1, 2, 3, 4):
        w.write(step, {"loss": float(step)})
    w.write(2, {"score": 1.0}, split="eval")
    w.write(4, {"score": 2.0}, split="eval")
    w.close()
    with open(os.path.join(work, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write('{"step": 5, "lo')  # torn by a kill
    # Resumed from step 4, whose evaluation the restored state does not hold.
    w = trainer.MetricWriter(
        work, resume_step=4, keep=lambda r: r.get("split") != "eval" or r["step"] == 2
    )
    w.write(4, {"score": 2.5}, split="eval")
    w.close()
    got = [(r["step"], r.get("split", "train")) for r in _records(f"{work}/metrics.jsonl")]
    assert got == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (2, "eval"), (4, "eval")]
    assert _records(f"{work}/metrics.jsonl")[-1]["score"] == 2.5
    trainer.MetricWriter(work, resume_step=-1).close()  # a fresh run: an empty file
    assert _records(f"{work}/metrics.jsonl") == []


def test_loop_state_is_saved_and_restored_beside_the_train_state(tmp_path):
    tx = optax.sgd(0.1)
    params = {"w": jnp.arange(4, dtype=jnp.float32)}
    state = _state(7, params, tx)
    position = {"epoch": 2, "batch": 5, "best": {"score": 81.25, "metrics": {"f1": float("nan")}}}
    checkpointer = ckpt.TrainCheckpointer(str(tmp_path / "c"), keep=2, async_save=False)
    trainer.save_checkpoint(checkpointer, 7, state, trainer.JsonState(position))
    checkpointer.wait()
    checkpointer.close()

    checkpointer = ckpt.TrainCheckpointer(str(tmp_path / "c"), keep=2, async_save=False)
    mesh = sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:1])
    shardings = jax.tree_util.tree_map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state
    )
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, loop = checkpointer.restore_latest(
        trainer.restore_target(abstract, shardings), trainer.JsonState
    )
    checkpointer.close()
    assert int(restored.step) == 7
    np.testing.assert_array_equal(restored.params["w"], params["w"])
    assert loop.value["epoch"] == 2 and loop.value["batch"] == 5
    assert loop.value["best"]["score"] == 81.25 and np.isnan(loop.value["best"]["metrics"]["f1"])

    # With nothing on disk: no state, an empty loop state.
    empty = ckpt.TrainCheckpointer(str(tmp_path / "none"), keep=2, async_save=False)
    restored, loop = empty.restore_latest(abstract, trainer.JsonState)
    empty.close()
    assert restored is None and loop.value is None


def test_nonfinite_parameters_are_never_checkpointed(tmp_path):
    params = {"w": jnp.array([1.0, jnp.nan])}
    state = trainer.TrainState(
        step=jnp.array(1, jnp.int32),
        params=params,
        opt_state=(),
        rng=jnp.zeros(2, jnp.uint32),
        nonfinite_steps=jnp.array(0, jnp.int32),
    )
    checkpointer = ckpt.TrainCheckpointer(str(tmp_path / "c"), keep=1, async_save=False)
    try:
        with np.testing.assert_raises_regex(trainer.NonFiniteError, "not checkpointing"):
            trainer.save_checkpoint(checkpointer, 1, state, trainer.JsonState({}))
        assert checkpointer.steps() == []
    finally:
        checkpointer.close()


def test_sigterm_becomes_a_flag_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with trainer.Preemption() as preemption:
        assert not preemption.check()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.check()
    assert signal.getsignal(signal.SIGTERM) is before


def test_guarded_update_skips_nonfinite_gradients():
    tx = optax.sgd(1.0)
    params = {"w": jnp.ones(3)}
    state = trainer.TrainState(
        step=jnp.array(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jnp.zeros(2, jnp.uint32),
        nonfinite_steps=jnp.array(0, jnp.int32),
    )
    bad = {"w": jnp.array([1.0, jnp.inf, 0.0])}
    new, _, finite = trainer.apply_guarded_update(state, bad, jnp.array(1.0), tx)
    assert not bool(finite) and int(new.step) == 1 and int(new.nonfinite_steps) == 1
    np.testing.assert_array_equal(new.params["w"], params["w"])
    good = {"w": jnp.array([1.0, 2.0, 0.0])}
    new, norm, finite = trainer.apply_guarded_update(new, good, jnp.array(1.0), tx)
    assert bool(finite) and float(norm) == np.float32(np.sqrt(5.0))
    np.testing.assert_array_equal(new.params["w"], [0.0, -1.0, 1.0])


def test_pretrain_uses_the_shared_pieces():
    """pretrain.py builds on trainer.py: the names it exposes are trainer's own."""
    for name in ("TrainState", "MetricWriter", "Preemption", "NonFiniteError", "new_train_state"):
        assert getattr(pretrain, name) is getattr(trainer, name)
    assert pretrain.process_batch_block is trainer.process_batch_block


def test_global_batch_of_one_process_is_the_whole_batch():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2, tensor=1), jax.devices())
    rules = sharding.DEFAULT_RULES
    host = {F.INPUT_IDS: np.arange(16 * 3, dtype=np.int32).reshape(16, 3)}
    batch = trainer.global_batch(mesh, rules, host)
    np.testing.assert_array_equal(np.asarray(batch[F.INPUT_IDS]), host[F.INPUT_IDS])
    assert batch[F.INPUT_IDS].sharding == sharding.batch_sharding(mesh, rules, 2)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])  # lax.cond / a select on every output
def test_guarded_update_applies_finite_steps_and_skips_the_others(monkeypatch, backend):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    tx = optax.adamw(0.1, weight_decay=0.01)
    params = {"w": jnp.arange(4, dtype=jnp.float32), "b": jnp.ones((2, 3), jnp.float32)}
    state = _state(3, params, tx)
    grads = {"w": jnp.full(4, 0.5), "b": jnp.full((2, 3), -2.0)}
    update = jax.jit(trainer.apply_guarded_update, static_argnums=3)

    new, norm, finite = update(state, grads, jnp.float32(1.5), tx)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    want = optax.apply_updates(params, updates)
    assert bool(finite) and int(new.step) == 4 and int(new.nonfinite_steps) == 0
    np.testing.assert_allclose(float(norm), np.sqrt(4 * 0.25 + 6 * 4.0), rtol=1e-6)
    for got, expected in zip(
        jax.tree_util.tree_leaves((new.params, new.opt_state)),
        jax.tree_util.tree_leaves((want, opt_state)),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    for loss, bad in (
        (jnp.float32(jnp.nan), grads),
        (jnp.float32(1.0), {**grads, "w": grads["w"].at[1].set(jnp.inf)}),
    ):
        skipped, _, finite = update(state, bad, loss, tx)
        assert not bool(finite) and int(skipped.step) == 4 and int(skipped.nonfinite_steps) == 1
        for got, kept in zip(
            jax.tree_util.tree_leaves((skipped.params, skipped.opt_state)),
            jax.tree_util.tree_leaves((state.params, state.opt_state)),
            strict=True,
        ):
            np.testing.assert_array_equal(got, kept)
