"""Model FLOPs and device peaks, for MFU (model FLOPs utilization).

Training FLOPs of one sequence (forward + backward = 3x forward; a matmul of an [m, k] by
a [k, n] matrix is 2*m*k*n):

    encoder matmuls  6 * T * L * (4*D^2 + 2*D*F)          (q, k, v, out; two FFN matmuls)
    attention        6 * T^2 * L * 2 * D  = 12 * L * T^2 * D   (QK^T and probs @ V)
    MLM head         6 * P * (D^2 + D*V)                  (transform + tied decoder, gathered
                                                           positions only)
    pooler + NSP     6 * (D^2 + 2*D)

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
    ("H100", 989e12),
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


def training_flops_per_sequence(config: ModelConfig, seq_len: int, num_predictions: int) -> float:
    d, f, v, n_layers = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.num_layers,
    )
    t, p = seq_len, num_predictions
    encoder = 6 * t * n_layers * (4 * d * d + 2 * d * f)
    attention = 12 * n_layers * t * t * d
    mlm = 6 * p * (d * d + d * v)
    nsp = 6 * (d * d + 2 * d)
    return float(encoder + attention + mlm + nsp)


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
