"""Loss and metric functions against values computed by hand."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from bertjax import losses
from data_pipelines import features as F


def test_masked_lm_loss_weights_and_accuracy():
    # Two predictions: the first confident and right, the second uniform; a padded third.
    logits = jnp.array([[[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = jnp.array([[0, 2, 1]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    out = losses.masked_lm_loss(logits, labels, weights)
    first = -math.log(math.exp(10) / (math.exp(10) + 2))
    np.testing.assert_allclose(out["loss"], (first + math.log(3)) / 2, rtol=1e-6)
    # argmax of the uniform row is 0 != 2: one of two counted predictions is right.
    np.testing.assert_allclose(out["accuracy"], 0.5)
    assert float(out["weight_sum"]) == 2.0


def test_masked_lm_loss_is_fp32_for_bf16_logits():
    logits = jnp.zeros((1, 2, 4), jnp.bfloat16)
    out = losses.masked_lm_loss(logits, jnp.array([[1, 2]]), jnp.ones((1, 2)))
    assert out["loss"].dtype == jnp.float32
    np.testing.assert_allclose(out["loss"], math.log(4), rtol=1e-6)


def test_all_zero_weights_give_zero_not_nan():
    out = losses.masked_lm_loss(jnp.ones((1, 2, 3)), jnp.array([[0, 1]]), jnp.zeros((1, 2)))
    assert float(out["loss"]) == 0.0 and float(out["accuracy"]) == 0.0


def test_classification_and_nsp():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    labels = jnp.array([0, 0, 1])
    out = losses.next_sentence_loss(logits, labels)
    p = math.exp(2) / (math.exp(2) + 1)
    expected = (-math.log(p) - math.log(1 - p) - math.log(1 / (1 + math.e))) / 3
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["accuracy"], 1 / 3, rtol=1e-6)
    masked = losses.classification_loss(logits, labels, jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(masked["loss"], -math.log(p), rtol=1e-6)
    np.testing.assert_allclose(masked["accuracy"], 1.0)


def test_regression_loss():
    out = losses.regression_loss(jnp.array([[1.0], [3.0]]), jnp.array([2.0, 3.0]))
    np.testing.assert_allclose(out["loss"], 0.5)


def test_span_loss_ignores_padding():
    start = jnp.array([[0.0, 0.0, 100.0]])  # the huge logit sits on a padding token
    end = jnp.array([[0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 0]])
    out = losses.span_loss(start, end, jnp.array([1]), jnp.array([0]), mask)
    np.testing.assert_allclose(out["loss"], math.log(2), rtol=1e-6)


def test_pretraining_loss_sums_mlm_and_nsp_and_skips_unpaired_rows():
    mlm_logits = jnp.zeros((2, 1, 4))
    nsp_logits = jnp.array([[3.0, 0.0], [0.0, 0.0]])
    batch = {
        F.MASKED_LM_IDS: jnp.array([[1], [2]]),
        F.MASKED_LM_WEIGHTS: jnp.array([[1.0], [1.0]]),
        F.NEXT_SENTENCE_LABELS: jnp.array([[0], [-1]]),  # second row has no pair
    }
    loss, m = losses.pretraining_loss(mlm_logits, nsp_logits, batch)
    nsp = -math.log(math.exp(3) / (math.exp(3) + 1))
    np.testing.assert_allclose(m["mlm_loss"], math.log(4), rtol=1e-6)
    np.testing.assert_allclose(m["nsp_loss"], nsp, rtol=1e-5)
    np.testing.assert_allclose(loss, math.log(4) + nsp, rtol=1e-5)
    assert float(m["nsp_accuracy"]) == 1.0 and float(m["nsp_weight_sum"]) == 1.0
