"""Optimizers and schedules: BERT's warmup/decay, weight-decay mask, clipping, LAMB."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax.optim import OptimConfig, decay_mask, learning_rate_schedule, make_optimizer


def test_linear_warmup_then_linear_decay_to_zero():
    cfg = OptimConfig(learning_rate=1e-4, warmup_steps=10, decay="linear")
    lr = learning_rate_schedule(cfg, num_steps=110)
    np.testing.assert_allclose(lr(0), 0.0)
    np.testing.assert_allclose(lr(5), 0.5e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(10), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(60), 0.5e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(110), 0.0, atol=1e-12)


def test_cosine_and_constant():
    cos = learning_rate_schedule(
        OptimConfig(learning_rate=1.0, warmup_steps=0, decay="cosine"), 100
    )
    np.testing.assert_allclose(cos(50), 0.5, rtol=1e-5)
    const = learning_rate_schedule(
        OptimConfig(learning_rate=2.0, warmup_steps=4, decay="constant"), 10
    )
    assert float(const(2)) == pytest.approx(1.0) and float(const(9)) == pytest.approx(2.0)


PARAMS = {
    "bert": {
        "encoder": {
            "layer_0": {
                "output": {
                    "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
                    "LayerNorm": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
                }
            }
        },
        "embeddings": {"word_embeddings": {"embedding": jnp.ones((3, 2))}},
    },
    "cls": {"predictions": {"output_bias": jnp.ones((3,))}},
}


def test_decay_mask_skips_layernorm_and_biases():
    mask = decay_mask(PARAMS)
    out = mask["bert"]["encoder"]["layer_0"]["output"]
    assert out["dense"]["kernel"] is True and out["dense"]["bias"] is False
    assert out["LayerNorm"]["scale"] is False and out["LayerNorm"]["bias"] is False
    assert mask["bert"]["embeddings"]["word_embeddings"]["embedding"] is True
    assert mask["cls"]["predictions"]["output_bias"] is False


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_applies_only_where_masked(name):
    cfg = OptimConfig(
        name=name,
        learning_rate=0.1,
        warmup_steps=0,
        decay="constant",
        weight_decay=0.5,
        clip_grad_norm=0.0,
    )
    tx = make_optimizer(cfg, 10)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    out = new["bert"]["encoder"]["layer_0"]["output"]
    assert float(out["dense"]["kernel"][0, 0]) < 1.0  # decayed with zero gradient
    assert float(out["dense"]["bias"][0]) == 1.0
    assert float(out["LayerNorm"]["scale"][0]) == 1.0
    assert float(new["cls"]["predictions"]["output_bias"][0]) == 1.0


def test_global_norm_clipping():
    cfg = OptimConfig(
        learning_rate=1.0, warmup_steps=0, decay="constant", weight_decay=0.0, clip_grad_norm=1.0
    )
    tx = make_optimizer(cfg, 10)
    params = {"w": jnp.zeros((2,))}
    state = tx.init(params)
    # The clip stage is first in the chain: feed it a big gradient and read the clipped one.
    clip_state = state[0]
    clipped, _ = optax.clip_by_global_norm(1.0).update({"w": jnp.array([30.0, 40.0])}, clip_state)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="config.optim.name='sgd'"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match=r"config.optim: unknown keys \['lr'\]"):
        OptimConfig.from_config_dict({"lr": 1.0})
