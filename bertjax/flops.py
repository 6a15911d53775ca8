"""Model FLOPs and device peaks, for MFU (model FLOPs utilization).

Training FLOPs of one sequence (forward + backward = 3x forward; a matmul of an [m, k] by
a [k, n] matrix is 2*m*k*n):

    encoder matmuls  6 * T * L * (4*D^2 + 2*D*F)          (q, k, v, out; two FFN matmuls)
    attention        6 * T^2 * L * 2 * D  = 12 * L * T^2 * D   (QK^T and probs @ V)
    MLM head         6 * P * (D^2 + D*V)                  (transform + tied decoder, gathered
                                                           positions only)
    pooler + NSP     6 * (D^2 + 2*D)

Fine-tuning for sequence classification (`finetuning_flops_per_sequence`) has the same
encoder and attention terms; its head runs on the pooled [CLS] vector, one position:

    pooler + classifier  6 * (D^2 + D*C)                  (C labels; 1 for regression)

Embedding lookups, LayerNorm, softmax and elementwise ops are not counted (the usual
convention: MFU counts the model's matmul work, not the implementation's).
Peaks are dense bf16 datasheet numbers per JAX device; on CPU the peak is measured.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from bertjax.config import ModelConfig

# Dense bf16 peak FLOP/s per JAX device, matched against device_kind (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("V100", 125e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e / v5 lite
    ("TPU v4", 275e12),
    ("TPU v3", 61.5e12),  # per core; JAX exposes the 2 cores of a v3 chip as 2 devices
    ("TPU v2", 23e12),
)


def _encoder_matmul_flops(config: ModelConfig, seq_len: int) -> int:
    """6 * T * L * (4*D^2 + 2*D*F): the per-token kernels of every layer."""
    d, f = config.hidden_size, config.intermediate_size
    return 6 * seq_len * config.num_layers * (4 * d * d + 2 * d * f)


def _attention_flops(config: ModelConfig, seq_len: int) -> int:
    """12 * L * T^2 * D: QK^T and probs @ V of every layer, forward and backward."""
    return 12 * config.num_layers * seq_len * seq_len * config.hidden_size


def training_flops_per_sequence(config: ModelConfig, seq_len: int, num_predictions: int) -> float:
    d, v = config.hidden_size, config.vocab_size
    p = num_predictions
    mlm = 6 * p * (d * d + d * v)
    nsp = 6 * (d * d + 2 * d)
    return float(
        _encoder_matmul_flops(config, seq_len) + _attention_flops(config, seq_len) + mlm + nsp
    )


def finetuning_flops_per_sequence(config: ModelConfig, seq_len: int, num_labels: int) -> float:
    """Training FLOPs of one sequence-classification example (BertForSequenceClassification):
    encoder matmuls + attention over all T positions, then the pooler (D x D) and the
    classifier (D x C) once, on the [CLS] vector:

        6 * T * L * (4*D^2 + 2*D*F) + 12 * L * T^2 * D + 6 * (D^2 + D*C)
    """
    d = config.hidden_size
    head = 6 * (d * d + d * num_labels)
    return float(_encoder_matmul_flops(config, seq_len) + _attention_flops(config, seq_len) + head)


def measured_cpu_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-N FLOP/s of a jitted fp32 matmul on the default device."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for one device."""
    device = device or jax.local_devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    for name, peak in PEAK_FLOPS:
        if name.lower() in kind.lower():
            return peak, f"datasheet bf16 peak of {kind}"
    if device.platform == "cpu":
        return measured_cpu_peak_flops(), "measured fp32 matmul on this CPU"
    return float("nan"), f"unknown device kind {kind!r}"
