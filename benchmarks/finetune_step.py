"""Steady-state GLUE fine-tuning step throughput, compile time, peak memory and MFU.

    python -m benchmarks.finetune_step --size base --seq_len 128 --batch_size 32
        [--num_labels 3] [--dtype bfloat16] [--steps 3] [--rounds 3] [--peer] [--json]

The step is bertjax's real fine-tuning one (finetune.train_step on
BertForSequenceClassification: weighted cross-entropy on the pooled [CLS] vector, or mean
squared error with --num_labels 1; AdamW with the paper's recipe of warmup + linear decay,
weight decay 0.01, global-norm clipping at 1.0; dropout 0.1), its state created sharded
by finetune_state.init_state + sharding.sharded_init and the step jitted with in/out shardings
and donated state over a data-parallel mesh of the local devices, as finetune.finetune
does. The batch is synthetic: GLUE-like sentence pairs padded to --seq_len. MFU = model
FLOPs per step (flops.finetuning_flops_per_sequence: 6*N*tokens for the encoder matmuls +
attention + pooler and classifier on one position) / step time / peak, with the device's
datasheet bf16 peak on GPU/TPU and, on CPU, a peak measured in this run by a large jitted
matmul.

With --peer the same step runs in Hugging Face transformers' BertForSequenceClassification
on PyTorch (same shapes, batch and labels, train mode, torch.optim.AdamW with lr 2e-5,
weight decay 0.01, eps 1e-6, clip_grad_norm_ 1.0) and the ratio bertjax / peer is printed.
With --json the last line is one JSON object with tokens_per_sec, mfu, peak_flops,
compile_seconds (and peer_tokens_per_sec, ratio with --peer). Timing as in
benchmarks/train_step.py: turns, medians, the best CPU peak of the rounds.
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
from bertjax import finetune, finetune_state, flops, sharding
from bertjax.config import MODEL_SIZES, model_config_for_size
from bertjax.finetune_batching import WEIGHT
from bertjax.finetune_task import ModelOverrides
from bertjax.model import BertForSequenceClassification
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from data_pipelines.features import (
    HF_ATTENTION_MASK,
    HF_TOKEN_TYPE_IDS,
    INPUT_IDS,
    INPUT_MASK,
    LABEL,
    SEGMENT_IDS,
)

# The schedule of a typical run (MNLI: 393k examples, batch 32, 3 epochs) with the
# fine-tuning configs' 10% warmup; its length does not change the step's cost.
SCHEDULE_STEPS = 36_816
WARMUP_FRACTION = 0.1
LEARNING_RATE = 2e-5


def make_batch(batch_size: int, seq_len: int, num_labels: int, vocab: int, seed: int = 0):
    """Sentence pairs "[CLS] a [SEP] b [SEP]" of random lengths, padded to seq_len."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(3, seq_len // 4), seq_len + 1, batch_size)
    positions = np.arange(seq_len)[None]  # [1, T]
    input_mask = (positions < lengths[:, None]).astype(np.int32)  # [B, T]
    first_end = (lengths // 2)[:, None]
    segment_ids = ((positions > first_end) & (input_mask > 0)).astype(np.int32)
    input_ids = rng.integers(1000, vocab, (batch_size, seq_len)).astype(np.int32) * input_mask
    input_ids[:, 0] = 101  # [CLS]
    rows = np.arange(batch_size)
    input_ids[rows, first_end[:, 0]] = 102  # [SEP]
    input_ids[rows, lengths - 1] = 102
    if num_labels == 1:  # STS-B: a similarity score in [0, 5]
        label = rng.uniform(0.0, 5.0, batch_size).astype(np.float32)
    else:
        label = rng.integers(0, num_labels, batch_size).astype(np.int32)
    return {
        INPUT_IDS: input_ids,
        INPUT_MASK: input_mask,
        SEGMENT_IDS: segment_ids,
        LABEL: label,
        WEIGHT: np.ones(batch_size, np.float32),  # no filled-up rows
    }


def setup_bertjax(args):
    """(runner, finish), as in train_step.setup_bertjax."""
    config = ModelOverrides(dtype=args.dtype).apply(model_config_for_size(args.size))
    model = BertForSequenceClassification(config, args.num_labels)
    optim = OptimConfig(
        learning_rate=LEARNING_RATE, warmup_steps=round(WARMUP_FRACTION * SCHEDULE_STEPS)
    )
    tx = make_optimizer(optim, SCHEDULE_STEPS)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1), jax.local_devices())
    rules = sharding.DEFAULT_RULES
    sharding.check_divisible(args.batch_size, mesh, rules, what="--batch_size")
    with mesh, nn.logical_axis_rules(rules):
        init = functools.partial(
            finetune_state.init_state, model=model, tx=tx, seq_len=args.seq_len
        )
        seed_key = jax.random.key_data(jax.random.key(0))
        _, state_sharding, init_jit = sharding.sharded_init(init, seed_key, mesh, rules)
        state = init_jit(seed_key)
        step = jax.jit(
            functools.partial(
                finetune.train_step,
                model=model,
                tx=tx,
                schedule=learning_rate_schedule(optim, SCHEDULE_STEPS),
                regression=args.num_labels == 1,
                grad_accum_steps=optim.grad_accum_steps,
            ),
            in_shardings=(state_sharding, None),
            out_shardings=(state_sharding, None),
            donate_argnums=(0,),
        )
        batch = sharding.global_batch(
            mesh,
            rules,
            make_batch(args.batch_size, args.seq_len, args.num_labels, config.vocab_size),
        )
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    model_flops = args.batch_size * flops.finetuning_flops_per_sequence(
        config, args.seq_len, args.num_labels
    )
    return harness.jax_setup(
        args, compiled, state, batch, mesh=mesh, compile_seconds=compile_s,
        model_flops=model_flops, num_labels=args.num_labels,
    )  # fmt: skip


def setup_peer(args):
    """The same step in transformers' BertForSequenceClassification (PyTorch)."""
    import torch

    model, opt, device = harness.hf_bert(
        "BertForSequenceClassification",
        args.size,
        learning_rate=LEARNING_RATE,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=args.num_labels,
        problem_type="regression" if args.num_labels == 1 else "single_label_classification",
    )
    b = make_batch(args.batch_size, args.seq_len, args.num_labels, 30522)
    label_dtype = torch.float32 if args.num_labels == 1 else torch.long
    inputs = {
        INPUT_IDS: torch.tensor(b[INPUT_IDS], dtype=torch.long, device=device),
        HF_ATTENTION_MASK: torch.tensor(b[INPUT_MASK], dtype=torch.long, device=device),
        HF_TOKEN_TYPE_IDS: torch.tensor(b[SEGMENT_IDS], dtype=torch.long, device=device),
        "labels": torch.tensor(b[LABEL], dtype=label_dtype, device=device),
    }
    return harness.torch_peer(model, opt, inputs, device=device, bf16=args.dtype == "bfloat16")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base", choices=sorted(MODEL_SIZES))
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--num_labels", type=int, default=3, help="3: MNLI, 2: most GLUE tasks, 1: STS-B"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="steps timed per round")
    p.add_argument("--rounds", type=int, default=3, help="turns (bertjax, peer) timed")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peer", action="store_true", help="also run transformers (PyTorch)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.num_labels < 1 or args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--num_labels, --steps and --rounds must be >= 1, --warmup >= 0")
    harness.compare(args, setup_bertjax, setup_peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
