"""The Flax BERT modules: shapes, masking, numerics, heads and sharding annotations."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _data_helpers import model_batch, tiny_model_config

from bertjax.config import model_config_for_size
from bertjax.model import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from data_pipelines import features as F

CONFIG = tiny_model_config(vocab_size=97, intermediate_size=48, max_position_embeddings=32)


def _batch(b=2, t=12, p=3, seed=0):
    return model_batch(CONFIG.vocab_size, b, t, p, seed)


@pytest.fixture(scope="module")
def params():
    return BertForPreTraining(CONFIG).init(jax.random.key(0), _batch(), train=False)["params"]


def test_output_shapes_and_dtypes(params):
    out = BertForPreTraining(CONFIG).apply({"params": params}, _batch(), train=False)
    assert out["sequence_output"].shape == (2, 12, 32)
    assert out["pooled_output"].shape == (2, 32)
    assert out["mlm_logits"].shape == (2, 3, 97) and out["mlm_logits"].dtype == jnp.float32
    assert out["nsp_logits"].shape == (2, 2) and out["nsp_logits"].dtype == jnp.float32


def test_mlm_head_runs_on_gathered_positions_only(params):
    model = BertForPreTraining(CONFIG)
    batch = _batch()
    gathered = model.apply({"params": params}, batch, train=False)["mlm_logits"]
    full = model.apply(
        {"params": params},
        {k: v for k, v in batch.items() if k != F.MASKED_LM_POSITIONS},
        train=False,
    )
    assert full["mlm_logits"].shape == (2, 12, 97)
    expected = np.take_along_axis(
        np.asarray(full["mlm_logits"]), batch[F.MASKED_LM_POSITIONS][..., None], axis=1
    )
    np.testing.assert_allclose(gathered, expected, atol=1e-5)


def test_padding_does_not_change_real_tokens(params):
    model = BertModel(CONFIG)
    batch = _batch()
    out = model.apply({"params": params["bert"]}, batch, train=False)["sequence_output"]
    # Row 1 has 7 real tokens: changing its padding ids must not change them.
    other = {k: np.array(v) for k, v in batch.items()}
    other[F.INPUT_IDS][1, 7:] = 5
    out2 = model.apply({"params": params["bert"]}, other, train=False)["sequence_output"]
    np.testing.assert_allclose(out[1, :7], out2[1, :7], atol=1e-6)
    # ...while a real token does change them.
    other[F.INPUT_IDS][1, 3] = (other[F.INPUT_IDS][1, 3] % 90) + 2
    out3 = model.apply({"params": params["bert"]}, other, train=False)["sequence_output"]
    assert np.abs(np.asarray(out3[1, :7] - out[1, :7])).max() > 1e-3


def test_mlm_decoder_is_tied_to_word_embeddings(params):
    """Changing the word embedding table changes MLM logits through the tied decoder."""
    assert "decoder" not in params["cls"]["predictions"]
    model = BertForPreTraining(CONFIG)
    batch = _batch()
    out = model.apply({"params": params}, batch, train=False)
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    # logits for token v are <transform(h), E[v]> + b[v]: zeroing row 96 only changes column 96
    # once the effect through the input embeddings is removed (no input uses id 96 here).
    ids = np.asarray(batch[F.INPUT_IDS])
    assert not (ids == 96).any()
    unboxed = nn.meta.unbox(params)
    unboxed["bert"]["embeddings"]["word_embeddings"]["embedding"] = (
        nn.meta.unbox(table).at[96].set(0.0)
    )
    out2 = model.apply({"params": unboxed}, batch, train=False)
    diff = np.abs(np.asarray(out2["mlm_logits"] - out["mlm_logits"])).max(axis=(0, 1))
    assert diff[96] > 1e-4 and np.delete(diff, 96).max() < 1e-6


def test_dropout_uses_rng_and_eval_is_deterministic(params):
    model = BertForPreTraining(CONFIG)
    batch = _batch()
    a = model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(1)})
    c = model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(2)})
    e = model.apply({"params": params}, batch, train=False)
    np.testing.assert_array_equal(a["mlm_logits"], b["mlm_logits"])
    assert np.abs(np.asarray(a["mlm_logits"] - c["mlm_logits"])).max() > 1e-3
    assert np.abs(np.asarray(a["mlm_logits"] - e["mlm_logits"])).max() > 1e-3


def test_explicit_attention_path_equals_fused_path(params):
    """With dropout rates 0, the training path (explicit softmax) equals dot_product_attention."""
    cfg = CONFIG.replace(hidden_dropout_rate=0.0, attention_dropout_rate=0.0)
    batch = _batch()
    fused = BertForPreTraining(cfg).apply({"params": params}, batch, train=False)
    cfg_tiny_drop = cfg.replace(attention_dropout_rate=1e-9)  # forces the explicit path
    explicit = BertForPreTraining(cfg_tiny_drop).apply(
        {"params": params}, batch, train=True, rngs={"dropout": jax.random.key(0)}
    )
    m = batch[F.INPUT_MASK][..., None]
    diff = np.abs(np.asarray(fused["sequence_output"] - explicit["sequence_output"]) * m)
    assert diff.max() < 1e-5


def test_bf16_compute_with_fp32_params(params):
    cfg = CONFIG.replace(dtype="bfloat16")
    model = BertForPreTraining(cfg)
    batch = _batch()
    fresh = model.init(jax.random.key(0), batch, train=False)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.meta.unbox(fresh)))
    out = model.apply({"params": params}, batch, train=False)
    ref = BertForPreTraining(CONFIG).apply({"params": params}, batch, train=False)
    assert out["sequence_output"].dtype == jnp.bfloat16
    assert out["mlm_logits"].dtype == jnp.float32 and out["nsp_logits"].dtype == jnp.float32
    # bf16 has ~3 significant digits; the logits must still be close to fp32's.
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=0.1, rtol=0.05)

    def loss(p):
        o = model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(0)})
        return jnp.mean(o["mlm_logits"] ** 2)

    grads = jax.grad(loss)(nn.meta.unbox(params))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(g.dtype == jnp.float32 and bool(jnp.isfinite(g).all()) for g in leaves)


def test_remat_gives_same_values_and_gradients(params):
    batch = _batch()
    p = nn.meta.unbox(params)

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, batch, train=False)["mlm_logits"] ** 2)

    g1 = jax.grad(lambda p: loss(BertForPreTraining(CONFIG), p))(p)
    g2 = jax.grad(lambda p: loss(BertForPreTraining(CONFIG.replace(remat=True)), p))(p)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_every_parameter_has_logical_axes(params):
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == x.value.ndim
    q = params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    assert q.names == ("embed", "heads", "kv") and q.value.shape == (32, 4, 8)
    ffn = params["bert"]["encoder"]["layer_1"]["intermediate"]["dense"]["kernel"]
    assert ffn.names == ("embed", "mlp")
    assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].names == ("vocab", "embed")


def test_parameter_count_matches_formula(params):
    n = sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(params)))
    assert n == CONFIG.num_params(with_heads=True)
    base = model_config_for_size("base")
    shapes = jax.eval_shape(
        lambda: BertModel(base).init(
            jax.random.key(0),
            {F.INPUT_IDS: jnp.zeros((1, 8), jnp.int32), F.INPUT_MASK: jnp.ones((1, 8), jnp.int32)},
            train=False,
        )
    )
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
    assert n_base == base.num_params(with_heads=False)
    assert 109e6 < n_base < 110e6  # BERT-base: "110M parameters"


def test_downstream_heads():
    batch = _batch()
    batch.pop(F.MASKED_LM_POSITIONS)
    key = jax.random.key(0)
    cls = BertForSequenceClassification(CONFIG, num_labels=3)
    out = cls.apply(cls.init(key, batch, train=False), batch, train=False)
    assert out["logits"].shape == (2, 3) and out["logits"].dtype == jnp.float32
    reg = BertForSequenceClassification(CONFIG, num_labels=1)
    assert reg.apply(reg.init(key, batch, train=False), batch, train=False)["logits"].shape == (
        2,
        1,
    )
    qa = BertForQuestionAnswering(CONFIG)
    v = qa.init(key, batch, train=False)
    out = qa.apply(v, batch, train=False)
    assert out["start_logits"].shape == (2, 12) and out["end_logits"].shape == (2, 12)
    assert "pooler" not in v["params"]["bert"]
    tok = BertForTokenClassification(CONFIG, num_labels=5)
    assert tok.apply(tok.init(key, batch, train=False), batch, train=False)["logits"].shape == (
        2,
        12,
        5,
    )


def test_sequence_longer_than_positions_is_rejected(params):
    batch = _batch(t=40)
    batch[F.MASKED_LM_POSITIONS] = batch[F.MASKED_LM_POSITIONS] % 5
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=32"):
        BertForPreTraining(CONFIG).apply({"params": params}, batch, train=False)


def test_packed_attention_segments_isolate_sequences(params):
    """Two sequences packed in one row see only themselves (attention_segment_ids)."""
    model = BertModel(CONFIG)
    rng = np.random.default_rng(3)
    a = rng.integers(1, 97, 5).astype(np.int32)
    b = rng.integers(1, 97, 6).astype(np.int32)
    packed = {
        F.INPUT_IDS: np.concatenate([a, b])[None],
        F.INPUT_MASK: np.ones((1, 11), np.int32),
        F.SEGMENT_IDS: np.zeros((1, 11), np.int32),
        F.POSITION_IDS: np.concatenate([np.arange(5), np.arange(6)])[None],
        F.ATTENTION_SEGMENT_IDS: np.array([[1] * 5 + [2] * 6], np.int32),
    }
    out = model.apply({"params": params["bert"]}, packed, train=False)["sequence_output"]
    alone = model.apply(
        {"params": params["bert"]},
        {F.INPUT_IDS: b[None], F.INPUT_MASK: np.ones((1, 6), np.int32)},
        train=False,
    )
    np.testing.assert_allclose(out[0, 5:], alone["sequence_output"][0], atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 128, 96), (1000, 33)])
def test_dropout_rate_scale_and_determinism(shape):
    from bertjax.model import Dropout

    x = jnp.ones(shape, jnp.float32)
    drop = Dropout(0.1)
    y = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert y.shape == x.shape and y.dtype == x.dtype
    dropped = float(jnp.mean(y == 0))
    # Binomial standard error ~ 0.3 / sqrt(n).
    assert abs(dropped - 0.1) < 5 * 0.3 / np.sqrt(x.size)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs(float(jnp.mean(y)) - 1.0) < 5 * 0.33 / np.sqrt(x.size)
    again = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    other = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(y, again)
    assert float(jnp.mean((y == 0) != (other == 0))) > 0.1
    np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)
    half = Dropout(0.5).apply(
        {}, x.astype(jnp.bfloat16), deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    assert half.dtype == jnp.bfloat16
    assert abs(float(jnp.mean(half == 0)) - 0.5) < 5 * 0.5 / np.sqrt(x.size)


def test_hashed_bits_are_balanced_and_do_not_depend_on_sharding():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from bertjax.model import hashed_bits

    seeds = jnp.array([3, 4], jnp.uint32)
    bits = np.asarray(hashed_bits((16, 4, 32, 32), seeds))
    assert abs(np.unpackbits(bits.view(np.uint8)).mean() - 0.5) < 0.005
    assert len(np.unique(bits)) > 0.99 * bits.size  # no repeated blocks
    other = np.asarray(hashed_bits((16, 4, 32, 32), jnp.array([3, 5], jnp.uint32)))
    assert np.mean(bits == other) < 0.001
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    sharded = jax.jit(
        lambda s: hashed_bits((16, 4, 32, 32), s),
        out_shardings=NamedSharding(mesh, PartitionSpec("data", "model")),
    )(seeds)
    np.testing.assert_array_equal(np.asarray(sharded), bits)
