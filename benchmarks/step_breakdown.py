"""Where a pre-training step's time goes: forward, forward + backward, and the cost of
dropout, against the model FLOPs of each part.

    python -m benchmarks.step_breakdown --size base --seq_len 128 --batch_size 8

Prints, for BERT's dropout, no attention-probability dropout and no dropout at all, the
time of the jitted forward loss and of its gradient, with the FLOP/s each reaches (model
FLOPs from bertjax/flops.py: a third of the training FLOPs for the forward pass). Compare
with `benchmarks/train_step.py`, whose step adds the optimizer update.
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax

from benchmarks.train_step import make_batch
from bertjax import flops, losses
from bertjax.config import model_config_for_size
from bertjax.model import BertForPreTraining


def seconds(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_pred", type=int, default=20)
    p.add_argument("--prng_impl", default="threefry2x32")
    args = p.parse_args(argv)
    batch = make_batch(args.batch_size, args.seq_len, args.num_pred, 30522)
    peak, source = flops.peak_flops_per_device()
    print(f"peak {peak:.3g} FLOP/s ({source})")
    variants = {
        "BERT dropout (0.1, 0.1)": {},
        "no attention dropout": {"attention_dropout_rate": 0.0},
        "no dropout": {"hidden_dropout_rate": 0.0, "attention_dropout_rate": 0.0},
    }
    for name, overrides in variants.items():
        cfg = model_config_for_size(args.size, **overrides)
        model = BertForPreTraining(cfg)
        params = nn.meta.unbox(model.init(jax.random.key(0), batch, train=False)["params"])
        key = jax.random.key(1, impl=args.prng_impl)

        def loss(p, model=model, key=key):
            out = model.apply({"params": p}, batch, train=True, rngs={"dropout": key})
            return losses.pretraining_loss(out["mlm_logits"], out["nsp_logits"], batch)[0]

        train_flops = args.batch_size * flops.training_flops_per_sequence(
            cfg, args.seq_len, args.num_pred
        )
        fwd = seconds(jax.jit(loss), params)
        both = seconds(jax.jit(jax.grad(loss)), params)
        print(
            f"{name:26s} forward {fwd:6.2f} s ({train_flops / 3 / fwd / peak:5.1%} of peak)   "
            f"forward+backward {both:6.2f} s ({train_flops / both / peak:5.1%} of peak)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
