"""Steady-state pre-training step throughput, compile time, peak memory and MFU.

    python -m benchmarks.train_step --size base --seq_len 128 --batch_size 8 [--dtype bfloat16]
        [--steps 3] [--rounds 3] [--scan_layers] [--remat] [--peer] [--json]

The step is bertjax's real one (pretrain.train_step: MLM on gathered positions + NSP,
AdamW, global-norm clipping, dropout 0.1), jitted with donated state over a data-parallel
mesh of the local devices. MFU = model FLOPs per step (bertjax/flops.py documents the
formula: 6*N*tokens for the encoder matmuls + attention + the MLM head on gathered
positions) / step time / peak, with the device's datasheet bf16 peak on GPU/TPU and, on
CPU, a peak measured in this run by a large jitted matmul.

Timing (benchmarks/harness.py): bertjax and the peer run in turns, `--rounds` turns of
`--steps` timed steps each (after one untimed step), and each reports its median turn; on
a CPU the matmul peak is measured every round and the highest kept.

With --peer the same step runs in Hugging Face transformers' BertForPreTraining on
PyTorch (same shapes, batch, masked positions, AdamW, clipping; it computes MLM logits at
every position, as that model does) and the ratio bertjax / peer is printed.
With --json the last line is one JSON object with tokens_per_sec, mfu, peak_flops,
compile_seconds (and peer_tokens_per_sec, ratio with --peer).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from benchmarks import harness
from bertjax import flops, pretrain, sharding
from bertjax.config import model_config_for_size
from bertjax.model import BertForPreTraining
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from data_pipelines.features import (
    HF_ATTENTION_MASK,
    HF_TOKEN_TYPE_IDS,
    INPUT_IDS,
    INPUT_MASK,
    MASKED_LM_IDS,
    MASKED_LM_POSITIONS,
    MASKED_LM_WEIGHTS,
    NEXT_SENTENCE_LABELS,
    SEGMENT_IDS,
)


def make_batch(batch_size: int, seq_len: int, num_pred: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    positions = np.sort(
        np.stack(
            [
                rng.choice(np.arange(1, seq_len - 1), num_pred, replace=False)
                for _ in range(batch_size)
            ]
        ),
        axis=1,
    )
    return {
        INPUT_IDS: rng.integers(1000, vocab, (batch_size, seq_len)).astype(np.int32),
        INPUT_MASK: np.ones((batch_size, seq_len), np.int32),
        SEGMENT_IDS: (np.arange(seq_len)[None] >= seq_len // 2)
        .astype(np.int32)
        .repeat(batch_size, 0),
        MASKED_LM_POSITIONS: positions.astype(np.int32),
        MASKED_LM_IDS: rng.integers(1000, vocab, (batch_size, num_pred)).astype(np.int32),
        MASKED_LM_WEIGHTS: np.ones((batch_size, num_pred), np.float32),
        NEXT_SENTENCE_LABELS: rng.integers(0, 2, (batch_size, 1)).astype(np.int32),
    }


def build_step(args):
    """bertjax's compiled pre-training step for `args` (size, seq_len, batch_size, dtype,
    ...): returns (compiled step, state, batch, model config, mesh, compile seconds)."""
    config = model_config_for_size(
        args.size,
        dtype=args.dtype,
        remat=args.remat,
        remat_policy=args.remat_policy,
        scan_layers=args.scan_layers,
        attention_dropout_rate=args.attention_dropout,
    )
    model = BertForPreTraining(config)
    ocfg = OptimConfig(learning_rate=1e-4, warmup_steps=10, grad_accum_steps=args.grad_accum)
    tx = make_optimizer(ocfg, 1000)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    rules = sharding.DEFAULT_RULES
    with mesh, nn.logical_axis_rules(rules):
        init = functools.partial(
            pretrain.init_state,
            model=model,
            tx=tx,
            seq_len=args.seq_len,
            num_predictions=args.num_pred,
            prng_impl=args.prng_impl,
        )
        seed_key = jax.random.key_data(jax.random.key(0, impl=args.prng_impl))
        abstract = jax.eval_shape(init, seed_key)
        shardings = sharding.logical_shardings(mesh, rules, abstract)
        state = jax.jit(lambda k: nn.meta.unbox(init(k)), out_shardings=shardings)(seed_key)
        step = jax.jit(
            functools.partial(
                pretrain.train_step,
                model=model,
                tx=tx,
                schedule=learning_rate_schedule(ocfg, 1000),
                grad_accum_steps=args.grad_accum,
                prng_impl=args.prng_impl,
            ),
            in_shardings=(shardings, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        batch = sharding.global_batch(
            mesh, rules, make_batch(args.batch_size, args.seq_len, args.num_pred, config.vocab_size)
        )
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    return compiled, state, batch, config, mesh, compile_s


def setup_bertjax(args):
    """(runner, finish): the runner times steps; finish(step_seconds, peak, source) gives
    the result fields."""
    compiled, state, batch, config, mesh, compile_s = build_step(args)
    model_flops = args.batch_size * flops.training_flops_per_sequence(
        config, args.seq_len, args.num_pred
    )
    return harness.jax_setup(
        args, compiled, state, batch, mesh=mesh, compile_seconds=compile_s,
        model_flops=model_flops,
    )  # fmt: skip


def setup_peer(args):
    """The same step in transformers' BertForPreTraining (PyTorch)."""
    import torch

    model, opt, device = harness.hf_bert(
        "BertForPreTraining",
        args.size,
        learning_rate=1e-4,
        attention_probs_dropout_prob=args.attention_dropout,
    )
    b = make_batch(args.batch_size, args.seq_len, args.num_pred, 30522)
    labels = np.full((args.batch_size, args.seq_len), -100, np.int64)
    np.put_along_axis(labels, b[MASKED_LM_POSITIONS], b[MASKED_LM_IDS], axis=1)
    inputs = {
        INPUT_IDS: torch.tensor(b[INPUT_IDS], dtype=torch.long, device=device),
        HF_ATTENTION_MASK: torch.tensor(b[INPUT_MASK], dtype=torch.long, device=device),
        HF_TOKEN_TYPE_IDS: torch.tensor(b[SEGMENT_IDS], dtype=torch.long, device=device),
        "labels": torch.tensor(labels, device=device),
        "next_sentence_label": torch.tensor(
            b[NEXT_SENTENCE_LABELS][:, 0], dtype=torch.long, device=device
        ),
    }
    return harness.torch_peer(model, opt, inputs, device=device, bf16=args.dtype == "bfloat16")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument(
        "--num_pred",
        type=int,
        default=None,
        help="masked positions per sequence (default: 20 at 128, 80 at 512)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="steps timed per round")
    p.add_argument("--rounds", type=int, default=3, help="turns (bertjax, peer) timed")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--remat", action="store_true", help="recompute each layer in the backward")
    p.add_argument("--remat_policy", default="nothing_saveable", help="what --remat keeps")
    p.add_argument("--scan_layers", action="store_true", help="nn.scan over the layers")
    p.add_argument("--attention_dropout", type=float, default=0.1)
    p.add_argument(
        "--prng_impl",
        default="threefry2x32",
        choices=["threefry2x32", "rbg", "unsafe_rbg"],
        help="RNG of the dropout seeds (the configs' default, threefry2x32)",
    )
    p.add_argument("--peer", action="store_true", help="also run transformers (PyTorch)")
    p.add_argument("--json", action="store_true")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.num_pred is None:  # google-research/bert's max_predictions_per_seq
        args.num_pred = {128: 20, 512: 80}.get(args.seq_len, max(1, round(args.seq_len * 0.15)))
    return args


def main(argv=None) -> int:
    args = parse_args(parser(), argv)
    harness.compare(args, setup_bertjax, setup_peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
