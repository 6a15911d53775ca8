"""Pure loss and metric functions. Everything is computed in fp32.

Each function returns sums and counts next to means where a caller must aggregate
over micro-batches, hosts or eval steps: means of means are wrong when weights differ.

Units: losses are cross-entropies in nats (natural log) or squared errors in the target's
units squared; accuracies are fractions in [0, 1] (the logs and eval_results.json show
percent); `*_sum` are sums over the weighted items and `weight_sum` the sum of the weights.
Means divide by max(weight_sum, 1e-5), so an all-zero-weight batch gives 0, not NaN. Shapes
are checked by JAX when traced: mismatched shapes raise its TypeError / ValueError; no
function raises on values (labels outside [0, V) give a meaningless loss, as optax's).
Letters: B batch, P masked positions, V vocabulary, L labels, T length, E pairs per packed
row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from data_pipelines.features import MASKED_LM_IDS, MASKED_LM_WEIGHTS, NEXT_SENTENCE_LABELS


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def masked_lm_loss(
    logits: jax.Array, label_ids: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Weighted cross-entropy over the gathered masked positions (the paper, section 3.1,
    Task #1; google-research/bert's `run_pretraining.get_masked_lm_output`).

    logits [B, P, V], label_ids [B, P] int, weights [B, P] (0 for padding predictions).
    Returns {"loss" (weighted mean, nats), "accuracy" (argmax == label, weighted fraction),
    "loss_sum", "correct_sum", "weight_sum"}, fp32 scalars.
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
    """Softmax cross-entropy and accuracy for integer labels (NSP, GLUE classification;
    google-research/bert's `run_classifier.create_model`).

    logits [B, L], labels [B] int in [0, L), weights [B] (optional; 0 drops padding examples).
    Returns {"loss" (weighted mean, nats), "accuracy" (fraction), "loss_sum", "correct_sum",
    "weight_sum"}, fp32 scalars.
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
    """NSP loss (the paper, section 3.1, Task #2; google-research/bert's
    `run_pretraining.get_next_sentence_output`): `classification_loss` over logits [B, 2];
    labels [B] follow google-research/bert: 0 = B follows A, 1 = B is random."""
    return classification_loss(logits, labels, weights)


def pair_next_sentence_loss(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """NSP over every pair of a batch: logits [B, 2] or [B, E, 2] (packed rows), labels of
    the same leading shape (or [B, 1]); a negative label (no pair) is left out. Returns
    `classification_loss`'s dict over the B (or B * E) pairs."""
    labels = labels.reshape(-1)
    weights = (labels >= 0).astype(jnp.float32)
    return next_sentence_loss(logits.reshape(-1, 2), jnp.maximum(labels, 0), weights)


def regression_loss(
    predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Mean squared error (STS-B; transformers' BertForSequenceClassification with one
    label). predictions [B] or [B, 1], targets [B] float, weights [B] (optional). Returns
    {"loss" (weighted mean, target units squared), "loss_sum", "weight_sum"}."""
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
    """SQuAD loss: mean of start and end cross-entropies over the sequence positions
    (the paper, sections 4.2-4.3; google-research/bert's `run_squad.model_fn` compute_loss).

    start/end_logits [B, T]; positions [B] int in [0, T); input_mask [B, T] (optional:
    padding tokens, input_mask == 0, are excluded from the softmax); weights [B] (optional).
    Unanswerable questions (SQuAD 2.0) point at position 0 ([CLS]). Returns {"loss"
    (weighted mean, nats), "loss_sum", "weight_sum"}.
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
    """Per-token cross-entropy and accuracy (NER: the paper, section 5.3, the label on each
    word's first piece). logits [B, T, L], labels [B, T] int, weights [B, T] (0 on pieces
    that are not scored). Returns `masked_lm_loss`'s dict over the weighted tokens."""
    return masked_lm_loss(logits, labels, weights)


def pretraining_loss(
    mlm_logits: jax.Array,
    nsp_logits: jax.Array,
    batch: dict[str, jax.Array],
    *,
    mlm_denominator: jax.Array | None = None,
    nsp_denominator: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total pre-training loss = MLM loss + NSP loss (as google-research/bert's
    `run_pretraining.model_fn`), and metrics.

    batch: `masked_lm_ids` [B, P], `masked_lm_weights` [B, P], `next_sentence_labels` [B]
    (or [B, E]); mlm_logits [B, P, V], nsp_logits [B, 2] (or [B, E, 2]). Returns (loss, fp32
    scalar in nats; metrics {"loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"
    (fractions), "mlm_weight_sum", "nsp_weight_sum"}).

    The NSP term is dropped for examples whose `next_sentence_labels` is negative, so
    corpora without sentence pairs (or the empty pair slots of packed rows) still train
    MLM. Packed rows give nsp_logits [B, E, 2] and next_sentence_labels [B, E].
    The denominators default to this batch's weight sums; a caller accumulating
    micro-batches passes the whole batch's sums so the total equals the full-batch loss.
    """
    mlm = masked_lm_loss(mlm_logits, batch[MASKED_LM_IDS], batch[MASKED_LM_WEIGHTS])
    nsp = pair_next_sentence_loss(nsp_logits, batch[NEXT_SENTENCE_LABELS])
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
