"""The BERT encoder and its heads, as Flax Linen modules.

The module tree mirrors the original TensorFlow variable names, so that importing or
exporting a checkpoint is a table (see convert_names.py):

    bert/embeddings/{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    bert/encoder/layer_N/attention/self/{query, key, value}
    bert/encoder/layer_N/attention/output/{dense, LayerNorm}
    bert/encoder/layer_N/intermediate/dense
    bert/encoder/layer_N/output/{dense, LayerNorm}
    bert/pooler/dense
    cls/predictions/{transform/dense, transform/LayerNorm, output_bias}
    cls/seq_relationship/{output_weights, output_bias}

With `config.scan_layers` the layer_N subtrees become one, bert/encoder/layers/..., whose
arrays carry a leading [num_layers] axis (logical name "layers"); stack_layers and
unstack_layers convert, and model directories on disk keep the layer_N layout.

Dimension letters used in shape comments:
    B batch, T length (queries), S length (keys), D model width, H heads, K head dim,
    F feed-forward width, V vocabulary, P masked positions per sequence, L labels,
    E pairs (examples) per packed row.

Parameters carry logical axis names (vocab, embed, heads, kv, mlp) and activations carry
(batch, length, embed, heads, kv, mlp); sharding.py maps these to the (data, fsdp, tensor)
mesh. Without a mesh and rules in scope, the annotations are no-ops.

Numerics: matmuls run in `config.dtype`, parameters are stored in `config.param_dtype`;
attention softmax, LayerNorm statistics and every logit returned are fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertjax.config import SCANNED, ModelConfig
from data_pipelines.features import (
    ATTENTION_SEGMENT_IDS,
    HF_ATTENTION_MASK,
    HF_TOKEN_TYPE_IDS,
    INPUT_IDS,
    INPUT_MASK,
    MASKED_LM_POSITIONS,
    NEXT_SENTENCE_POSITIONS,
    POSITION_IDS,
    SEGMENT_IDS,
)

Batch = Mapping[str, jax.Array]


def _dtypes(config: ModelConfig) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def _kernel_init(config: ModelConfig, names: tuple[str | None, ...]):
    init = nn.initializers.truncated_normal(stddev=config.initializer_range)
    return nn.with_logical_partitioning(init, names)


def _zeros(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _activation(name: str):
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unknown activation {name!r}")


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, names)


def layer_norm(config: ModelConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    """BERT's LayerNorm: two-pass variance, statistics in fp32, epsilon from the config."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
        **_dtypes(config),
    )


def _flat_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """`lax.dot_general` of `nn.DenseGeneral` (trailing dims of `lhs` against the leading
    dims of `rhs`, no batch dims) as one 2-D matmul [..., K] x [K, F].

    The attention projections keep their [D, H, K] / [H, K, D] kernels (checkpoints and
    sharding rules name those axes), but computed on the kernel's free 2-D view, XLA's CPU
    backend no longer copies every such kernel into a transposed layout each step (0.18 s
    per bert-base step of batch 8; the step measured ~2.5% faster). Same values.
    """
    (lhs_contract, rhs_contract), _ = dimension_numbers
    n = len(lhs_contract)
    lead = lhs.shape[: lhs.ndim - n]
    k = int(np.prod(rhs.shape[:n]))
    out = jax.lax.dot_general(
        lhs.reshape(*lead, k),
        rhs.reshape(k, -1),
        (((len(lead),), (0,)), ((), ())),
        precision=precision,
        **kwargs,
    )
    return out.reshape(*lead, *rhs.shape[n:])


def dense(config: ModelConfig, features: int, names: tuple[str | None, str | None], name: str):
    return nn.Dense(
        features,
        kernel_init=_kernel_init(config, names),
        bias_init=_zeros((names[1],)),
        name=name,
        **_dtypes(config),
    )


# Hugging Face's input names -> bertjax's (transformers' BertModel.forward arguments).
HF_INPUT_NAMES = {HF_ATTENTION_MASK: INPUT_MASK, HF_TOKEN_TYPE_IDS: SEGMENT_IDS}


def bertjax_names(batch: Batch) -> Batch:
    """The batch with Hugging Face's `attention_mask` / `token_type_ids` [B, T] renamed to
    `input_mask` / `segment_ids`; a batch without them comes back as it is.

    Raises ValueError when a batch gives both names of one input (which one holds is unclear).
    """
    if not any(name in batch for name in HF_INPUT_NAMES):
        return batch
    out = dict(batch)
    for hf, ours in HF_INPUT_NAMES.items():
        if hf in out:
            if ours in out:
                raise ValueError(f"the batch has both {hf!r} and {ours!r}; give one of them")
            out[ours] = out.pop(hf)
    return out


def padding_mask(batch: Batch) -> jax.Array:
    """Boolean attention mask [B, 1, T, S]: a query attends to the real (non-pad) keys.

    When the batch holds `attention_segment_ids` (packed sequences), a query also only
    attends to keys of its own packed sequence.
    """
    input_mask = batch[INPUT_MASK].astype(bool)  # [B, S]
    mask = input_mask[:, None, None, :]  # [B, 1, 1, S]
    if ATTENTION_SEGMENT_IDS in batch:
        seg = batch[ATTENTION_SEGMENT_IDS]
        mask = mask & (seg[:, None, :, None] == seg[:, None, None, :])  # [B, 1, T, S]
    return mask


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection whose output bits each depend on all
    input bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hashed_bits(shape: tuple[int, ...], seeds: jax.Array) -> jax.Array:
    """32 pseudo-random bits per element of `shape`: a hash of the element's index and two
    uint32 seeds. Each element is computed on its own (no generator state), so the bits do
    not depend on how the array is sharded, and XLA fuses them into their consumer."""
    rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    inner = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in range(len(shape) - 1, 0, -1):
        inner = inner + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
        stride = (stride * shape[dim]) % 2**32
    h = _fmix32(rows * jnp.uint32(0x9E3779B1) ^ seeds[0])
    return _fmix32(h ^ (inner * jnp.uint32(0x61C88647) + seeds[1]))


class Dropout(nn.Module):
    """Inverted dropout whose mask is a hash of the element index and a per-call seed.

    Flax's `nn.Dropout` draws 32 bits per element from the JAX PRNG; on CPU that was a
    fifth of a BERT-base training step. Here only two uint32 seeds come from the "dropout"
    RNG stream; the mask is `hashed_bits(...) < rate * 2**32` (the rate exact to 2**-32),
    computed element-wise inside the fused kernel and recomputable for the backward pass.
    Kept elements are scaled by the exact inverse keep probability. The masks do not depend
    on the mesh (nor on `prng_impl`'s generator speed).
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = round(self.rate * 2**32)
        if threshold >= 2**32:
            return jnp.zeros_like(x)
        seeds = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
        keep = hashed_bits(x.shape, seeds) >= jnp.uint32(threshold)
        return jnp.where(keep, x / (1.0 - threshold / 2**32), 0).astype(x.dtype)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (the paper,
    section 3, Figure 2; google-research/bert's `embedding_lookup` and
    `embedding_postprocessor`).

    Batch keys: `input_ids` [B, T], optional `segment_ids` [B, T] (zeros when absent) and
    `position_ids` [B, T] (packed rows; 0..T-1 when absent). Returns [B, T, D] in
    `config.dtype`. Raises ValueError when T > `config.max_position_embeddings`.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        init = _kernel_init(c, ("vocab", "embed"))
        self.word_embeddings = nn.Embed(
            c.vocab_size, c.hidden_size, embedding_init=init, **_dtypes(c)
        )
        self.position_embeddings = nn.Embed(
            c.max_position_embeddings,
            c.hidden_size,
            embedding_init=_kernel_init(c, (None, "embed")),
            **_dtypes(c),
        )
        self.token_type_embeddings = nn.Embed(
            c.type_vocab_size,
            c.hidden_size,
            embedding_init=_kernel_init(c, (None, "embed")),
            **_dtypes(c),
        )
        self.LayerNorm = layer_norm(c)
        self.dropout = Dropout(c.hidden_dropout_rate)

    def __call__(self, batch: Batch, *, train: bool) -> jax.Array:
        input_ids = batch[INPUT_IDS]  # [B, T]
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        position_ids = batch.get(POSITION_IDS)
        if position_ids is None:  # positions 0..T-1: a slice, not a gather
            table = self.position_embeddings.embedding
            positions = table[:seq_len][None].astype(self.config.dtype)  # [1, T, D]
        else:  # packed rows: positions restart at every sequence
            positions = self.position_embeddings(position_ids)  # [B, T, D]
        segment_ids = batch.get(SEGMENT_IDS)
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids) + positions + self.token_type_embeddings(segment_ids)
        )  # [B, T, D]
        x = self.LayerNorm(x)
        x = self.dropout(x, deterministic=not train)
        return _constrain(x, ("batch", "length", "embed"))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (BERT's attention/self; "Attention Is
    All You Need", section 3.2; google-research/bert's `attention_layer`).

    x [B, T, D] and a boolean mask [B, 1, T, S] (`padding_mask`) -> the heads' outputs
    [B, T, H, K]; softmax in fp32; attention dropout only when `train`.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        c = self.config
        h, k = c.num_heads, c.head_dim

        def project(name):
            return nn.DenseGeneral(
                (h, k),
                kernel_init=_kernel_init(c, ("embed", "heads", "kv")),
                bias_init=_zeros(("heads", "kv")),
                name=name,
                dot_general=_flat_dot_general,
                **_dtypes(c),
            )(x)

        names = ("batch", "length", "heads", "kv")
        q = _constrain(project("query"), names)  # [B, T, H, K]
        key = _constrain(project("key"), names)  # [B, S, H, K]
        v = _constrain(project("value"), names)  # [B, S, H, K]

        if train and c.attention_dropout_rate > 0.0:
            # Dropout on the attention probabilities (as the original BERT) needs the
            # probabilities themselves, which fused kernels never materialise.
            logits = jnp.einsum("bthk,bshk->bhts", q, key, preferred_element_type=jnp.float32)
            logits = logits / jnp.sqrt(jnp.float32(k))  # [B, H, T, S]
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)
            probs = Dropout(c.attention_dropout_rate)(probs, deterministic=False)
            out = jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)  # [B, T, H, K]
        else:
            # jax.nn.dot_product_attention with JAX's default implementation (XLA's in
            # JAX 0.10, softmax in fp32); benchmarks/accelerator_check.py times cuDNN's.
            out = jax.nn.dot_product_attention(q, key, v, mask=mask)  # [B, T, H, K]
        return _constrain(out, names)


class AttentionOutput(nn.Module):
    """Output projection of the heads, dropout, residual and post-LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(self, heads: jax.Array, residual: jax.Array, *, train: bool) -> jax.Array:
        c = self.config
        y = nn.DenseGeneral(
            c.hidden_size,
            axis=(-2, -1),
            kernel_init=_kernel_init(c, ("heads", "kv", "embed")),
            bias_init=_zeros(("embed",)),
            name="dense",
            dot_general=_flat_dot_general,
            **_dtypes(c),
        )(heads)  # [B, T, D]
        y = Dropout(c.hidden_dropout_rate)(y, deterministic=not train)
        return layer_norm(c)(y + residual)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        heads = SelfAttention(self.config, name="self")(x, mask, train=train)
        return AttentionOutput(self.config, name="output")(heads, x, train=train)


class Intermediate(nn.Module):
    """First feed-forward projection D -> F and the activation."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        y = dense(c, c.intermediate_size, ("embed", "mlp"), "dense")(x)  # [B, T, F]
        y = _activation(c.hidden_act)(y)
        return _constrain(y, ("batch", "length", "mlp"))


class Output(nn.Module):
    """Second feed-forward projection F -> D, dropout, residual and post-LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(self, y: jax.Array, residual: jax.Array, *, train: bool) -> jax.Array:
        c = self.config
        y = dense(c, c.hidden_size, ("mlp", "embed"), "dense")(y)  # [B, T, D]
        y = Dropout(c.hidden_dropout_rate)(y, deterministic=not train)
        return layer_norm(c)(y + residual)


class Layer(nn.Module):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        x = Attention(self.config, name="attention")(x, mask, train=train)
        y = Intermediate(self.config, name="intermediate")(x)
        x = Output(self.config, name="output")(y, x, train=train)
        return _constrain(x, ("batch", "length", "embed"))


def _layer_class(config: ModelConfig, *, scanned: bool) -> type[Layer]:
    """Layer, or with `config.remat` Layer under nn.remat with the named checkpoint policy.

    Inside nn.scan the loop already keeps XLA's common-subexpression elimination from
    undoing the recomputation, so the costlier prevent_cse barrier is off there.
    """
    if not config.remat:
        return Layer
    policy = getattr(jax.checkpoint_policies, config.remat_policy)
    return nn.remat(Layer, static_argnums=(3,), policy=policy, prevent_cse=not scanned)


class Encoder(nn.Module):
    """num_layers Layers: unrolled as layer_0, layer_1, ... or, with `config.scan_layers`,
    one Layer body run by nn.scan, its parameters stacked under encoder/layers."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> list[jax.Array]:
        """Returns the output of every layer (the last one is the sequence output)."""
        c = self.config
        layer_cls = _layer_class(c, scanned=c.scan_layers)
        if c.scan_layers:

            def body(encoder: Encoder, carry: jax.Array, mask: jax.Array):
                y = layer_cls(encoder.config, name=SCANNED)(carry, mask, train)
                return y, y  # carry on, and keep every layer's output as the scanned ys

            scan = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: SCANNED},
            )
            _, ys = scan(self, x, mask)  # [num_layers, B, T, D]
            return [ys[i] for i in range(c.num_layers)]
        outputs = []
        for i in range(c.num_layers):
            x = layer_cls(c, name=f"layer_{i}")(x, mask, train)
            outputs.append(x)
        return outputs


def _map_encoders(params: Mapping[str, Any], convert) -> dict[str, Any]:
    """Applies `convert` to every encoder subtree (a dict holding layer_N or SCANNED)."""
    if "layer_0" in params or SCANNED in params:
        return convert(dict(params))
    return {
        k: _map_encoders(v, convert) if isinstance(v, Mapping) else v for k, v in params.items()
    }


def stack_layers(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Canonical layer_0, layer_1, ... parameters -> the scanned layout (scan_layers=True).

    Works on any tree holding the encoder (the whole model's, bert/, or encoder/ itself);
    a tree already scanned, or without an encoder, comes back unchanged.
    """

    def convert(encoder: dict[str, Any]) -> dict[str, Any]:
        if SCANNED in encoder:
            return encoder
        names = [f"layer_{i}" for i in range(num_layers)]
        found = sorted(k for k in encoder if k.startswith("layer_"))
        if sorted(names) != found:
            raise ValueError(f"stack_layers: expected {num_layers} layers, found {found}")
        layers = [encoder.pop(name) for name in names]

        def stack(*xs):
            return jnp.stack(xs) if isinstance(xs[0], jax.Array) else np.stack(xs)

        return {**encoder, SCANNED: jax.tree_util.tree_map(stack, *layers)}

    return _map_encoders(params, convert)


def unstack_layers(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """The scanned layout (encoder/layers, leading [num_layers] axis) -> canonical layer_N.

    Works on any tree holding the encoder; a canonical tree comes back unchanged.
    """

    def convert(encoder: dict[str, Any]) -> dict[str, Any]:
        if SCANNED not in encoder:
            return encoder
        stacked = encoder.pop(SCANNED)
        sizes = {np.shape(x)[0] for x in jax.tree_util.tree_leaves(stacked)}
        if sizes != {num_layers}:
            raise ValueError(
                f"unstack_layers: expected a leading axis of {num_layers} layers, got {sizes}"
            )
        for i in range(num_layers):
            encoder[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
        return encoder

    return _map_encoders(params, convert)


class Pooler(nn.Module):
    """dense + tanh on the [CLS] token: position 0, or in a packed row each pair's [CLS]
    (`next_sentence_positions` [B, E], giving [B, E, D])."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        first = x[:, 0] if positions is None else gather_positions(x, positions)  # [B, (E,) D]
        return jnp.tanh(
            dense(self.config, self.config.hidden_size, ("embed", None), "dense")(first)
        )


class BertModel(nn.Module):
    """The BERT encoder: embeddings, transformer layers and pooler (the paper, section 3;
    google-research/bert's `modeling.BertModel`).

    Batch keys (int arrays): `input_ids` [B, T] token ids; `input_mask` [B, T] 1 on real
    tokens, 0 on padding; `segment_ids` [B, T] 0 for the first segment, 1 for the second
    (zeros when absent). Hugging Face's names `attention_mask` and `token_type_ids` are
    accepted for the last two (`bertjax_names`). Packed rows add `position_ids`,
    `attention_segment_ids` [B, T] and `next_sentence_positions` [B, E]
    (data_pipelines/packing.py).

    Returns a dict with `sequence_output` [B, T, D], `pooled_output` [B, D] ([B, E, D] for
    packed rows; dense + tanh on [CLS]) and, when `output_hidden_states`, `hidden_states`:
    the embedding output followed by every layer's output (num_layers + 1 arrays of
    [B, T, D]), in `config.dtype`. Dropout is on when `train` (needs the "dropout" RNG).
    Raises ValueError when T exceeds `config.max_position_embeddings` or the batch names an
    input twice (`input_mask` and `attention_mask`).
    """

    config: ModelConfig
    add_pooler: bool = True

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        if self.add_pooler:
            self.pooler = Pooler(self.config)

    def __call__(
        self, batch: Batch, *, train: bool, output_hidden_states: bool = False
    ) -> dict[str, Any]:
        batch = bertjax_names(batch)
        x = self.embeddings(batch, train=train)  # [B, T, D]
        layers = self.encoder(x, padding_mask(batch), train=train)
        out: dict[str, Any] = {"sequence_output": layers[-1]}
        if self.add_pooler:
            out["pooled_output"] = self.pooler(layers[-1], batch.get(NEXT_SENTENCE_POSITIONS))
        if output_hidden_states:
            out["hidden_states"] = [x, *layers]
        return out

    def word_embedding_table(self) -> jax.Array:
        """The [V, D] input embedding table, shared with the MLM output layer."""
        return self.embeddings.word_embeddings.embedding


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
    """x[b, positions[b, p]] for every b, p: [B, T, D], [B, P] -> [B, P, D]
    (google-research/bert's `gather_indexes`). Positions are not range-checked (JAX's gather
    does not raise on an out-of-range index)."""
    return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)


class Transform(nn.Module):
    """The MLM head's transform: dense + activation + LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        h = dense(c, c.hidden_size, ("embed", None), "dense")(h)
        return layer_norm(c)(_activation(c.hidden_act)(h))


class MaskedLMHead(nn.Module):
    """cls/predictions: transform, then logits against the tied word embeddings + bias
    (google-research/bert's `run_pretraining.get_masked_lm_output`).

    h [B, P, D] (the gathered masked positions, or every position) and the word-embedding
    table [V, D] -> logits [B, P, V], fp32.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        c = self.config
        h = Transform(c, name="transform")(h)  # [B, P, D]
        bias = self.param(
            "output_bias", _zeros(("vocab",)), (c.vocab_size,), jnp.dtype(c.param_dtype)
        )
        table = word_embeddings.astype(c.dtype)
        logits = jnp.einsum("bpd,vd->bpv", h, table, preferred_element_type=jnp.float32)
        return logits + bias.astype(jnp.float32)  # [B, P, V]


class NextSentenceHead(nn.Module):
    """cls/seq_relationship: logits = pooled @ output_weights^T + output_bias
    (google-research/bert's `run_pretraining.get_next_sentence_output`).

    pooled is [B, D], or [B, E, D] for the E pairs of a packed row; returns logits [B, (E,) 2]
    in fp32, class 0 = "B follows A", 1 = "B is random".
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        c = self.config
        w = self.param(
            "output_weights",
            _kernel_init(c, (None, "embed")),
            (2, c.hidden_size),
            jnp.dtype(c.param_dtype),
        )
        b = self.param("output_bias", _zeros((None,)), (2,), jnp.dtype(c.param_dtype))
        logits = jnp.einsum(
            "...d,ld->...l", pooled, w.astype(c.dtype), preferred_element_type=jnp.float32
        )
        return logits + b.astype(jnp.float32)  # [B, (E,) 2]


class PreTrainingHeads(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, masked_h: jax.Array, pooled: jax.Array, word_embeddings: jax.Array):
        mlm = MaskedLMHead(self.config, name="predictions")(masked_h, word_embeddings)
        nsp = NextSentenceHead(self.config, name="seq_relationship")(pooled)
        return mlm, nsp


class BertForPreTraining(nn.Module):
    """Encoder + masked-LM head (on the gathered `masked_lm_positions` only) + NSP head
    (the paper, section 3.1; google-research/bert's `run_pretraining.model_fn`).

    Batch keys: those of `BertModel`, plus `masked_lm_positions` [B, P] int (optional).

    Returns `mlm_logits` [B, P, V] and `nsp_logits` [B, 2] (fp32), plus the encoder outputs.
    Without `masked_lm_positions` in the batch, MLM logits are computed for every position.
    A packed batch (data_pipelines.packing: `position_ids`, `attention_segment_ids`,
    `next_sentence_positions` [B, E]) gives `nsp_logits` [B, E, 2], one per pair, and each
    pair attends only to itself.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool) -> dict[str, Any]:
        bert = BertModel(self.config, name="bert")
        out = bert(batch, train=train)
        seq = out["sequence_output"]  # [B, T, D]
        positions = batch.get(MASKED_LM_POSITIONS)
        masked = seq if positions is None else gather_positions(seq, positions)  # [B, P, D]
        mlm, nsp = PreTrainingHeads(self.config, name="cls")(
            masked, out["pooled_output"], bert.word_embedding_table()
        )
        return {**out, "mlm_logits": mlm, "nsp_logits": nsp}


class BertForSequenceClassification(nn.Module):
    """Classifier on the pooled [CLS] vector; `num_labels == 1` is regression (STS-B)
    (the paper, section 4.1; google-research/bert's `run_classifier.create_model`).

    Batch keys: those of `BertModel`. Returns the encoder outputs plus `logits` [B, L] in
    fp32 (dropout on the pooled vector when `train`).
    """

    config: ModelConfig
    num_labels: int

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool) -> dict[str, Any]:
        c = self.config
        out = BertModel(c, name="bert")(batch, train=train)
        pooled = Dropout(c.hidden_dropout_rate)(out["pooled_output"], deterministic=not train)
        logits = dense(c, self.num_labels, ("embed", None), "classifier")(pooled)  # [B, L]
        return {**out, "logits": logits.astype(jnp.float32)}


class BertForQuestionAnswering(nn.Module):
    """Span prediction: start and end logits for every token (SQuAD; the paper, sections
    4.2-4.3; google-research/bert's `run_squad.create_model`).

    Batch keys: those of `BertModel`. Returns the encoder outputs (no pooler) plus
    `start_logits` and `end_logits` [B, T] in fp32.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool) -> dict[str, Any]:
        c = self.config
        out = BertModel(c, add_pooler=False, name="bert")(batch, train=train)
        logits = dense(c, 2, ("embed", None), "qa_outputs")(out["sequence_output"])  # [B, T, 2]
        logits = logits.astype(jnp.float32)
        return {**out, "start_logits": logits[..., 0], "end_logits": logits[..., 1]}


class BertForTokenClassification(nn.Module):
    """Per-token classifier (tagging, NER; the paper, section 5.3, fine-tuning approach;
    transformers' BertForTokenClassification).

    Batch keys: those of `BertModel`. Returns the encoder outputs (no pooler) plus `logits`
    [B, T, L] in fp32 (dropout on the sequence output when `train`).
    """

    config: ModelConfig
    num_labels: int

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool) -> dict[str, Any]:
        c = self.config
        out = BertModel(c, add_pooler=False, name="bert")(batch, train=train)
        seq = Dropout(c.hidden_dropout_rate)(out["sequence_output"], deterministic=not train)
        logits = dense(c, self.num_labels, ("embed", None), "classifier")(seq)  # [B, T, L]
        return {**out, "logits": logits.astype(jnp.float32)}


def dummy_batch(
    config: ModelConfig, batch_size: int = 1, seq_len: int = 8, max_predictions: int = 2
) -> dict[str, jax.Array]:
    """A batch of the right shapes and dtypes, for `init` and `eval_shape`."""
    return {
        INPUT_IDS: jnp.zeros((batch_size, seq_len), jnp.int32),
        INPUT_MASK: jnp.ones((batch_size, seq_len), jnp.int32),
        SEGMENT_IDS: jnp.zeros((batch_size, seq_len), jnp.int32),
        MASKED_LM_POSITIONS: jnp.zeros((batch_size, max_predictions), jnp.int32),
    }


class FeatureTaggerHead(nn.Module):
    """The small tagger of feature-based NER (the BERT paper's Table 7) on frozen encoder
    features [B, T, F]: `lstm_layers` bidirectional LSTMs of `lstm_size` units per direction
    (none: a dense layer alone), then a dense layer to the labels. The output layer's `kernel`
    and `bias` belong to this module itself, so the head reads as a `classifier` of L outputs."""

    config: ModelConfig
    num_labels: int
    lstm_size: int = 0
    lstm_layers: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array, *, train: bool) -> jax.Array:
        rate = self.config.hidden_dropout_rate
        x = Dropout(rate, name="dropout_in")(x, deterministic=not train)  # [B, T, F]
        for i in range(self.lstm_layers if self.lstm_size else 0):
            # The cells are made here, so their parameters sit under this module by their names.
            forward = nn.RNN(nn.OptimizedLSTMCell(self.lstm_size, name=f"lstm_{i}_forward"))
            backward = nn.RNN(
                nn.OptimizedLSTMCell(self.lstm_size, name=f"lstm_{i}_backward"),
                reverse=True,
                keep_order=True,
            )
            x = nn.Bidirectional(forward, backward)(x, seq_lengths=lengths)
            x = Dropout(rate, name=f"dropout_{i}")(x, deterministic=not train)  # [B, T, 2U]
        kernel = self.param(
            "kernel", _kernel_init(self.config, (None, None)), (x.shape[-1], self.num_labels)
        )
        bias = self.param("bias", _zeros((None,)), (self.num_labels,))
        return jnp.einsum("btf,fl->btl", x, kernel) + bias  # [B, T, L]


class BertFeatureTagger(nn.Module):
    """Feature-based tagging: the encoder runs frozen (no dropout, no gradient) and the layers
    `feature_layers` (indexes into the layer outputs, -1 = last) are concatenated or summed
    (`combine`) into the features of `FeatureTaggerHead` (named classifier), the only part
    that trains."""

    config: ModelConfig
    num_labels: int
    feature_layers: tuple[int, ...] = (-1, -2, -3, -4)
    combine: str = "concat"
    lstm_size: int = 0
    lstm_layers: int = 0

    @nn.compact
    def __call__(self, batch: Batch, *, train: bool) -> dict[str, Any]:
        c = self.config
        out = BertModel(c, add_pooler=False, name="bert")(
            batch, train=False, output_hidden_states=True
        )
        layers = out["hidden_states"][1:]  # the L layer outputs, each [B, T, D]
        chosen = [jax.lax.stop_gradient(layers[i]).astype(jnp.float32) for i in self.feature_layers]
        if self.combine == "sum":
            x = sum(chosen[1:], chosen[0])  # [B, T, D]
        else:
            x = jnp.concatenate(chosen, axis=-1)  # [B, T, len(feature_layers) * D]
        mask = bertjax_names(batch)[INPUT_MASK]  # also under its Hugging Face name
        lengths = jnp.sum(mask > 0, axis=1).astype(jnp.int32)  # [B]
        logits = FeatureTaggerHead(
            c, self.num_labels, self.lstm_size, self.lstm_layers, name="classifier"
        )(x, lengths, train=train)
        return {"sequence_output": out["sequence_output"], "logits": logits.astype(jnp.float32)}
