"""Scanned layers (config.scan_layers) and remat policies: same numbers as the unrolled model,
layout conversion at every checkpoint boundary, and sharding of the stacked layers axis."""

from __future__ import annotations

import functools
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from _data_helpers import model_batch, tiny_model_config
from jax.sharding import PartitionSpec as P

from bertjax import checkpoint as ckpt
from bertjax import pretrain, sharding
from bertjax.config import REMAT_POLICIES, ModelConfig
from bertjax.finetune_state import init_from_checkpoint
from bertjax.model import (
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    stack_layers,
    unstack_layers,
)
from bertjax.optim import OptimConfig, decay_mask, make_optimizer
from bertjax.sharding import DEFAULT_RULES, MeshConfig

CONFIG = tiny_model_config(vocab_size=97, intermediate_size=48, max_position_embeddings=32)
SCANNED = CONFIG.replace(scan_layers=True)
LAYERS = CONFIG.num_layers
NO_DROPOUT = dict(hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


def _batch(b=2, t=12, p=3, seed=0):
    return model_batch(CONFIG.vocab_size, b, t, p, seed)


def _init(config: ModelConfig, seed: int = 0):
    model = BertForPreTraining(config)
    init = jax.jit(lambda key: model.init(key, _batch(), train=False)["params"])
    return nn.meta.unbox(init(jax.random.key(seed)))


def _apply(model: nn.Module, params, **kwargs):
    """model.apply on the test batch in eval mode, jitted."""
    return jax.jit(lambda p: model.apply({"params": p}, _batch(), train=False, **kwargs))(params)


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in ckpt.flatten_params(tree).items()}


def _assert_trees_close(a, b, atol=1e-5):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def params():
    """Canonical (unscanned) parameters of the tiny pre-training model."""
    return _init(CONFIG)


def test_scanned_init_has_the_stacked_layout(params):
    shapes = jax.eval_shape(
        lambda: BertForPreTraining(SCANNED).init(jax.random.key(0), _batch(), train=False)
    )["params"]
    encoder = shapes["bert"]["encoder"]
    assert list(encoder) == ["layers"]
    q = encoder["layers"]["attention"]["self"]["query"]["kernel"]
    assert q.names == ("layers", "embed", "heads", "kv") and q.value.shape == (LAYERS, 32, 4, 8)
    want = {k: v.shape for k, v in _flat(stack_layers(params, LAYERS)).items()}
    got = {k: v.shape for k, v in ckpt.flatten_params(nn.meta.unbox(shapes)).items()}
    assert got == want


def test_stack_unstack_round_trip(params):
    stacked = stack_layers(params, LAYERS)
    assert "layer_0" not in stacked["bert"]["encoder"]
    kernel = stacked["bert"]["encoder"]["layers"]["output"]["dense"]["kernel"]
    assert kernel.shape == (LAYERS, 48, 32)
    back = unstack_layers(stacked, LAYERS)
    fa, fb = _flat(params), _flat(back)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    # Idempotent on the target layout; subtrees (bert/ only, numpy leaves) work too.
    assert _flat(stack_layers(stacked, LAYERS)).keys() == _flat(stacked).keys()
    assert _flat(unstack_layers(params, LAYERS)).keys() == fa.keys()
    host = jax.tree_util.tree_map(np.asarray, {"bert": params["bert"]})
    leaf = stack_layers(host, LAYERS)["bert"]["encoder"]["layers"]["intermediate"]["dense"]["bias"]
    assert isinstance(leaf, np.ndarray) and leaf.shape == (LAYERS, 48)
    with pytest.raises(ValueError, match="expected 4 layers"):
        stack_layers(params, 4)
    with pytest.raises(ValueError, match="leading axis of 3 layers"):
        unstack_layers(stacked, 3)


def test_scanned_model_matches_unrolled_in_eval(params):
    stacked = stack_layers(params, LAYERS)
    a = _apply(BertForPreTraining(CONFIG), params)
    b = _apply(BertForPreTraining(SCANNED), stacked)
    for k in ("mlm_logits", "nsp_logits", "sequence_output", "pooled_output"):
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=1e-5, err_msg=k)
    ha = _apply(BertModel(CONFIG), params["bert"], output_hidden_states=True)["hidden_states"]
    hb = _apply(BertModel(SCANNED), stacked["bert"], output_hidden_states=True)["hidden_states"]
    assert len(ha) == len(hb) == LAYERS + 1  # embeddings + every layer
    for x, y in zip(ha, hb, strict=True):
        np.testing.assert_allclose(y, x, atol=1e-5, rtol=1e-5)
    assert not np.allclose(hb[1], hb[2])  # the layers differ: not equal by accident


def _loss(config: ModelConfig, p, batch, *, seed: int = 0):
    out = BertForPreTraining(config).apply(
        {"params": p}, batch, train=True, rngs={"dropout": jax.random.key(seed)}
    )
    return jnp.mean(out["mlm_logits"] ** 2) + jnp.mean(out["nsp_logits"] ** 2)


def _loss_and_grads(config: ModelConfig, p):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, config, batch=_batch())))(p)


@pytest.fixture(scope="module")
def reference_grads(params):
    """{scan_layers: (loss, grads)} without remat or dropout (train=True), for both layouts."""
    return {
        False: _loss_and_grads(CONFIG.replace(**NO_DROPOUT), params),
        True: _loss_and_grads(SCANNED.replace(**NO_DROPOUT), stack_layers(params, LAYERS)),
    }


def test_scanned_gradients_match_unrolled_in_train_mode(reference_grads):
    (la, ga), (lb, gb) = reference_grads[False], reference_grads[True]
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    assert "layers" in gb["bert"]["encoder"]
    _assert_trees_close(unstack_layers(gb, LAYERS), ga)


@pytest.mark.parametrize(
    "policy, scan",
    [(policy, True) for policy in REMAT_POLICIES] + [("dots_saveable", False)],
)
def test_remat_policy_gives_same_loss_and_gradients(params, reference_grads, policy, scan):
    # (nothing_saveable without scan is test_model.py's remat test.)
    config = CONFIG.replace(remat=True, remat_policy=policy, scan_layers=scan, **NO_DROPOUT)
    loss, grads = _loss_and_grads(config, stack_layers(params, LAYERS) if scan else params)
    ref_loss, ref_grads = reference_grads[scan]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    _assert_trees_close(grads, ref_grads)


def test_scanned_remat_recomputes_the_same_dropout_masks(params, reference_grads):
    stacked = stack_layers(params, LAYERS)
    config = SCANNED.replace(hidden_dropout_rate=0.1, attention_dropout_rate=0.0)
    la, ga = _loss_and_grads(config, stacked)
    lb, gb = _loss_and_grads(config.replace(remat=True), stacked)
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    _assert_trees_close(gb, ga)
    ref = float(reference_grads[True][0])
    assert abs(float(la) - ref) > 1e-3 * abs(ref)  # dropout was on


def test_lamb_update_is_the_same_for_stacked_layers(params):
    config = OptimConfig(name="lamb", learning_rate=1e-3, warmup_steps=0)
    tx = make_optimizer(config, 10)
    grads = jax.tree_util.tree_map(
        lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) + x), params
    )
    step = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])
    canonical = step(grads, params)
    stacked = step(stack_layers(grads, LAYERS), stack_layers(params, LAYERS))
    _assert_trees_close(unstack_layers(stacked, LAYERS), canonical, atol=1e-7)
    # ...and on the canonical layout it is optax.lamb.
    ref = optax.chain(
        optax.clip_by_global_norm(config.clip_grad_norm),
        optax.lamb(1e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=decay_mask),
    )
    expected = jax.jit(lambda g, p: ref.update(g, ref.init(p), p)[0])(grads, params)
    _assert_trees_close(canonical, expected, atol=1e-7)


def test_bad_remat_policy_is_named():
    with pytest.raises(ValueError, match=r"remat_policy='save_all' is not one of \("):
        CONFIG.replace(remat_policy="save_all")
    assert "dots_saveable" in REMAT_POLICIES


def test_scan_layers_is_not_a_shape_field():
    assert CONFIG.shape_differences(SCANNED) == {}
    assert ModelConfig.from_dict(SCANNED.to_dict()) == SCANNED


# --- Sharding ---------------------------------------------------------------------------------


def test_scanned_state_shards_with_layers_axis_replicated(params):
    assert jax.device_count() == 8
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = BertForPreTraining(SCANNED)
    tx = optax.adamw(1e-3)
    init_fn = functools.partial(
        pretrain.init_state, model=model, tx=tx, seq_len=12, num_predictions=3
    )
    key = jax.random.key_data(jax.random.key(0))
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        abstract, shardings, init = sharding.sharded_init(init_fn, key, mesh, DEFAULT_RULES)
        state = init(key)
        layers = state.params["bert"]["encoder"]["layers"]
        q = layers["attention"]["self"]["query"]["kernel"]
        assert q.shape == (LAYERS, 32, 4, 8)
        assert q.sharding.spec == P(None, "fsdp", "tensor", None)
        assert layers["intermediate"]["dense"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
        assert layers["output"]["LayerNorm"]["scale"].sharding.spec == P(None, "fsdp")
        mu = state.opt_state[0].mu["bert"]["encoder"]["layers"]["output"]["dense"]["kernel"]
        assert mu.sharding.spec == P(None, "tensor", "fsdp")
        # The sharded scanned forward gives the unsharded unrolled numbers.
        stacked = jax.device_put(stack_layers(params, LAYERS), shardings.params)
        out = _apply(model, stacked)
    ref = _apply(BertForPreTraining(CONFIG), params)
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=1e-5, rtol=1e-5)


# --- Checkpoint boundaries ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, params):
    """A model directory written from an unscanned initialisation."""
    out = str(tmp_path_factory.mktemp("scan") / "ckpt")
    return ckpt.save_model_dir(out, jax.device_get(params), CONFIG, source="test")


def test_finetune_init_stacks_a_canonical_checkpoint(model_dir, params):
    config, loaded, _ = ckpt.load_model_dir(model_dir)
    assert config == CONFIG
    scanned = config.replace(scan_layers=True)
    model = BertForSequenceClassification(scanned, 2)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        state, _, gather = init_from_checkpoint(
            model, optax.adamw(1e-3), 12, 0, {"bert": loaded["bert"]}, mesh, DEFAULT_RULES,
            source=model_dir, head="classifier/",
        )  # fmt: skip
        trained = jax.device_get(gather(state.params))
    assert "layers" in trained["bert"]["encoder"]
    _assert_trees_close(unstack_layers(trained, LAYERS)["bert"], params["bert"], atol=0)


def test_pretrain_init_stacks_a_canonical_checkpoint(model_dir, params):
    model = BertForPreTraining(SCANNED)
    init_fn = functools.partial(
        pretrain.init_state, model=model, tx=optax.adamw(1e-3), seq_len=12, num_predictions=3
    )
    key = jax.random.key_data(jax.random.key(1))
    mesh = sharding.make_mesh(MeshConfig(data=4, fsdp=2))
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        _, shardings, init = sharding.sharded_init(init_fn, key, mesh, DEFAULT_RULES)
        cfg = types.SimpleNamespace(init_checkpoint=model_dir, model=SCANNED)
        state = pretrain._load_init_checkpoint(cfg, init(key), shardings)
    _assert_trees_close(unstack_layers(jax.device_get(state.params), LAYERS), params, atol=0)


def test_export_from_scanned_params_is_canonical(tmp_path, params):
    stacked = jax.device_get(stack_layers(params, LAYERS))
    out = ckpt.save_model_dir(str(tmp_path / "m"), stacked, SCANNED, source="scanned")
    meta = json.load(open(os.path.join(out, ckpt.CONFIG_FILE)))
    assert meta["model"]["scan_layers"] is False
    config, loaded, meta = ckpt.load_model_dir(out)
    assert config == CONFIG and meta["heads"] == ["pooler", "mlm", "nsp"]
    assert sorted(loaded["bert"]["encoder"]) == [f"layer_{i}" for i in range(LAYERS)]
    _assert_trees_close(loaded, params, atol=0)


def _scanned_workdir(path: str, params) -> str:
    """A pre-training workdir holding one scanned train-state checkpoint (step 5)."""
    os.makedirs(path)
    manager = ocp.CheckpointManager(os.path.join(path, ckpt.CHECKPOINTS_DIR), item_names=("state",))
    state = {"params": stack_layers(jax.device_get(params), LAYERS), "step": np.int32(5)}
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    meta = {"format": "bertjax", "version": ckpt.FORMAT_VERSION, "model": SCANNED.to_dict()}
    with open(os.path.join(path, ckpt.CONFIG_FILE), "w") as f:
        json.dump(meta, f)
    return path


def test_scanned_workdir_reads_as_a_canonical_model(tmp_path, params):
    workdir = _scanned_workdir(str(tmp_path / "work"), params)
    step, restored = ckpt.restore_workdir_params(workdir)
    assert step == 5
    _assert_trees_close(restored, params, atol=0)
    config, loaded, meta = ckpt.load_model_dir(workdir)
    assert config == CONFIG and meta["step"] == 5
    _assert_trees_close(loaded, params, atol=0)
    # Resuming the workdir in the other layout is refused, not silently restarted.
    ckpt.check_workdir_model(workdir, SCANNED)
    with pytest.raises(ckpt.CheckpointError, match="scan_layers=True parameters"):
        ckpt.check_workdir_model(workdir, CONFIG)
