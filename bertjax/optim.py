"""Optimizers and learning-rate schedules (optax).

- AdamW as BERT trains: linear warmup then linear decay to zero, decoupled weight decay
  0.01 that skips LayerNorm parameters and biases, global-norm clipping at 1.0.
  (google-research/bert's AdamWeightDecayOptimizer has no bias correction; optax's adamw
  has it. With 10k warmup steps the two agree after the first few hundred steps.)
- LAMB (You et al., 2019) for large batches, with the same mask and schedule. Its trust
  ratio is per tensor, and per layer for the stacked tensors of scanned layers, so
  `model.scan_layers` does not change the update.
Gradient accumulation happens inside the jitted train step (pretrain.py), so the
optimizer sees one exact gradient per step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from bertjax.config import SCANNED, from_group


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optim` group of every experiment (defaults: BERT's pre-training optimizer)."""

    name: str = "adamw"  # adamw | lamb
    learning_rate: float = 1e-4  # peak learning rate
    warmup_steps: int = 10_000  # linear warmup from 0 (fine-tuning: optim.warmup_fraction)
    decay: str = "linear"  # linear | cosine | constant after warmup
    end_learning_rate: float = 0.0  # value at the last step
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    eps: float = 1e-6  # Adam epsilon (BERT's)
    weight_decay: float = 0.01  # decoupled, not on LayerNorm or biases
    clip_grad_norm: float = 1.0  # global-norm clipping (0 = off)
    grad_accum_steps: int = 1  # micro-batches per step, accumulated inside the jitted step

    def __post_init__(self):
        if self.name not in ("adamw", "lamb"):
            raise ValueError(f"config.optim.name={self.name!r}: use 'adamw' or 'lamb'")
        if self.decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"config.optim.decay={self.decay!r}: use linear, cosine or constant")
        if self.learning_rate <= 0:
            raise ValueError(f"config.optim.learning_rate={self.learning_rate}: must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"config.optim.warmup_steps={self.warmup_steps}: must be >= 0")
        if self.grad_accum_steps < 1:
            raise ValueError(f"config.optim.grad_accum_steps={self.grad_accum_steps}: must be >= 1")

    @classmethod
    def from_config_dict(cls, optim: Any) -> OptimConfig:
        return from_group(cls, optim, "config.optim")


def learning_rate_schedule(config: OptimConfig, num_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then the configured decay until num_steps."""
    warmup = min(config.warmup_steps, num_steps)
    rest = max(num_steps - warmup, 1)
    if config.decay == "linear":
        after = optax.linear_schedule(config.learning_rate, config.end_learning_rate, rest)
    elif config.decay == "cosine":
        alpha = config.end_learning_rate / config.learning_rate
        after = optax.cosine_decay_schedule(config.learning_rate, rest, alpha=alpha)
    else:
        after = optax.constant_schedule(config.learning_rate)
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup), after], [warmup]
    )


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: kernels and embeddings, not LayerNorm or biases."""

    def keep(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        if any(n == "LayerNorm" for n in names):
            return False
        return not names[-1].endswith("bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def _is_stacked(path: tuple[Any, ...]) -> bool:
    """Whether a parameter path lies in the scanned layers: [num_layers, ...] tensors."""
    names = [getattr(p, "key", str(p)) for p in path]
    return any(a == "encoder" and b == SCANNED for a, b in zip(names, names[1:], strict=False))


def scale_by_layerwise_trust_ratio() -> optax.GradientTransformation:
    """optax.scale_by_trust_ratio, but each layer of a stacked tensor gets its own ratio."""
    trust = optax.scale_by_trust_ratio()

    def update_fn(updates, state, params):
        def scale(path, update, param):
            def one(u, p):
                return trust.update(u, state, p)[0]

            return jax.vmap(one)(update, param) if _is_stacked(path) else one(update, param)

        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(trust.init, update_fn)


def make_optimizer(config: OptimConfig, num_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config, num_steps)
    if config.name == "adamw":
        core = optax.adamw(
            schedule,
            b1=config.beta1,
            b2=config.beta2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    else:  # optax.lamb, with the trust ratio per layer of scanned tensors
        core = optax.chain(
            optax.scale_by_adam(b1=config.beta1, b2=config.beta2, eps=config.eps),
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            scale_by_layerwise_trust_ratio(),
            optax.scale_by_learning_rate(schedule),
        )
    if config.clip_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), core)
    return core
