"""Pure loss and metric functions. Everything is computed in fp32.

Each function returns sums and counts next to means where a caller must aggregate
over micro-batches, hosts or eval steps: means of means are wrong when weights differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def masked_lm_loss(
    logits: jax.Array, label_ids: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Weighted cross-entropy over the gathered masked positions.

    logits [B, P, V], label_ids [B, P], weights [B, P] (0 for padding predictions).
    Returns loss (weighted mean), accuracy, and the sums behind them.
    """
    logits, w = _f32(logits), _f32(weights)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, label_ids)  # [B, P]
    correct = (jnp.argmax(logits, axis=-1) == label_ids).astype(jnp.float32)
    denom = jnp.sum(w)
    safe = jnp.maximum(denom, 1e-5)
    loss_sum = jnp.sum(per_token * w)
    correct_sum = jnp.sum(correct * w)
    return {
        "loss": loss_sum / safe,
        "accuracy": correct_sum / safe,
        "loss_sum": loss_sum,
        "correct_sum": correct_sum,
        "weight_sum": denom,
    }


def classification_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Softmax cross-entropy and accuracy for integer labels (NSP, GLUE classification).

    logits [B, L], labels [B], weights [B] (optional; 0 drops padding examples).
    """
    logits = _f32(logits)
    w = jnp.ones(labels.shape, jnp.float32) if weights is None else _f32(weights)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    denom = jnp.sum(w)
    safe = jnp.maximum(denom, 1e-5)
    return {
        "loss": jnp.sum(per_example * w) / safe,
        "accuracy": jnp.sum(correct * w) / safe,
        "loss_sum": jnp.sum(per_example * w),
        "correct_sum": jnp.sum(correct * w),
        "weight_sum": denom,
    }


def next_sentence_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """NSP loss; labels follow google-research/bert: 0 = B follows A, 1 = B is random."""
    return classification_loss(logits, labels, weights)


def pair_next_sentence_loss(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """NSP over every pair of a batch: logits [B, 2] or [B, K, 2] (packed rows), labels of
    the same leading shape (or [B, 1]); a negative label (no pair) is left out."""
    labels = labels.reshape(-1)
    weights = (labels >= 0).astype(jnp.float32)
    return next_sentence_loss(logits.reshape(-1, 2), jnp.maximum(labels, 0), weights)


def regression_loss(
    predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Mean squared error (STS-B). predictions [B] or [B, 1], targets [B]."""
    p = _f32(predictions).reshape(targets.shape)
    t = _f32(targets)
    w = jnp.ones(t.shape, jnp.float32) if weights is None else _f32(weights)
    denom = jnp.sum(w)
    se = jnp.sum(jnp.square(p - t) * w)
    return {"loss": se / jnp.maximum(denom, 1e-5), "loss_sum": se, "weight_sum": denom}


def span_loss(
    start_logits: jax.Array,
    end_logits: jax.Array,
    start_positions: jax.Array,
    end_positions: jax.Array,
    input_mask: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """SQuAD loss: mean of start and end cross-entropies over the sequence positions.

    start/end_logits [B, T]; positions [B]; padding tokens (input_mask == 0) are excluded
    from the softmax. Unanswerable questions point at position 0 ([CLS]).
    """
    start, end = _f32(start_logits), _f32(end_logits)
    if input_mask is not None:
        neg = jnp.finfo(jnp.float32).min
        start = jnp.where(input_mask > 0, start, neg)
        end = jnp.where(input_mask > 0, end, neg)
    w = jnp.ones(start_positions.shape, jnp.float32) if weights is None else _f32(weights)
    ls = optax.softmax_cross_entropy_with_integer_labels(start, start_positions)
    le = optax.softmax_cross_entropy_with_integer_labels(end, end_positions)
    per_example = 0.5 * (ls + le)
    denom = jnp.sum(w)
    loss_sum = jnp.sum(per_example * w)
    return {"loss": loss_sum / jnp.maximum(denom, 1e-5), "loss_sum": loss_sum, "weight_sum": denom}


def token_classification_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Per-token cross-entropy and accuracy. logits [B, T, L], labels [B, T], weights [B, T]."""
    return masked_lm_loss(logits, labels, weights)


def pretraining_loss(
    mlm_logits: jax.Array,
    nsp_logits: jax.Array,
    batch: dict[str, jax.Array],
    *,
    mlm_denominator: jax.Array | None = None,
    nsp_denominator: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total pre-training loss = MLM loss + NSP loss (as google-research/bert), and metrics.

    The NSP term is dropped for examples whose `next_sentence_labels` is negative, so
    corpora without sentence pairs (or the empty pair slots of packed rows) still train
    MLM. Packed rows give nsp_logits [B, K, 2] and next_sentence_labels [B, K].
    The denominators default to this batch's weight sums; a caller accumulating
    micro-batches passes the whole batch's sums so the total equals the full-batch loss.
    """
    mlm = masked_lm_loss(mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    nsp = pair_next_sentence_loss(nsp_logits, batch["next_sentence_labels"])
    mlm_den = mlm["weight_sum"] if mlm_denominator is None else mlm_denominator
    nsp_den = nsp["weight_sum"] if nsp_denominator is None else nsp_denominator
    mlm_loss = mlm["loss_sum"] / jnp.maximum(mlm_den, 1e-5)
    nsp_loss = nsp["loss_sum"] / jnp.maximum(nsp_den, 1e-5)
    loss = mlm_loss + nsp_loss
    metrics = {
        "loss": loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": mlm["correct_sum"] / jnp.maximum(mlm_den, 1e-5),
        "nsp_loss": nsp_loss,
        "nsp_accuracy": nsp["correct_sum"] / jnp.maximum(nsp_den, 1e-5),
        "mlm_weight_sum": mlm["weight_sum"],
        "nsp_weight_sum": nsp["weight_sum"],
    }
    return loss, metrics
