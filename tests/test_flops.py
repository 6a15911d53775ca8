"""Model FLOPs formulas against the real parameter shapes, and the fine-tuning benchmark."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _data_helpers import tiny_model_config

from bertjax import flops
from bertjax.config import ModelConfig, model_config_for_size
from bertjax.model import BertForSequenceClassification
from data_pipelines import features as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_model_config(vocab_size=99, intermediate_size=37)


def _kernels(config: ModelConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every matmul kernel of BertForSequenceClassification, keyed by path."""
    model = BertForSequenceClassification(config, num_labels)
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in (F.INPUT_IDS, F.INPUT_MASK, F.SEGMENT_IDS)}
    params = nn.meta.unbox(
        jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
    )
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "/".join(p.key for p in path): tuple(leaf.shape)
        for path, leaf in flat
        if path[-1].key == "kernel"
    }


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("seq_len", [16, 48])
def test_finetuning_flops_match_parameter_shapes(seq_len, num_labels):
    kernels = _kernels(TINY, num_labels)
    per_token = {k: s for k, s in kernels.items() if k.startswith("bert/encoder/")}
    per_sequence = {k: s for k, s in kernels.items() if k not in per_token}
    # Every kernel is accounted for: the six of each layer (stacked or not), then the pooler
    # and the classifier.
    layer_kernels = (
        "attention/self/query/kernel",
        "attention/self/key/kernel",
        "attention/self/value/kernel",
        "attention/output/dense/kernel",
        "intermediate/dense/kernel",
        "output/dense/kernel",
    )
    assert {next(n for n in layer_kernels if k.endswith(n)) for k in per_token} == set(
        layer_kernels
    )
    assert sorted(per_sequence) == ["bert/pooler/dense/kernel", "classifier/kernel"]
    d = per_sequence["bert/pooler/dense/kernel"][0]
    assert per_sequence["classifier/kernel"] == (d, num_labels)

    # Training = 3x forward; a kernel of n entries costs 2n FLOPs per position it runs on.
    matmuls = 6 * seq_len * sum(math.prod(s) for s in per_token.values())
    matmuls += 6 * sum(math.prod(s) for s in per_sequence.values())  # [CLS] only
    # QK^T and probs @ V: 2 * T * T * H * K FLOPs each, per layer; the query kernels hold
    # D * H * K entries per layer.
    query_entries = sum(
        math.prod(s) for k, s in per_token.items() if k.endswith("attention/self/query/kernel")
    )
    attention = 3 * 2 * 2 * seq_len * seq_len * query_entries // d

    got = flops.finetuning_flops_per_sequence(TINY, seq_len, num_labels)
    assert got == matmuls + attention


def test_pretraining_flops_unchanged():
    """The pre-training formula shares its encoder terms with fine-tuning; its value stays."""
    base = model_config_for_size("base")
    assert flops.training_flops_per_sequence(base, 128, 20) == 69_928_989_696.0
    # Same encoder and attention; only the heads differ (MLM + NSP vs pooler + classifier).
    d, v = base.hidden_size, base.vocab_size
    diff = flops.training_flops_per_sequence(base, 128, 20) - flops.finetuning_flops_per_sequence(
        base, 128, 3
    )
    assert diff == 6 * 20 * (d * d + d * v) + 6 * 2 * d - 6 * 3 * d


@pytest.mark.slow
def test_finetune_step_benchmark_runs():
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "benchmarks.finetune_step"]
    cmd += "--size tiny --seq_len 32 --batch_size 4 --steps 1 --warmup 1 --json".split()
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for key in (
        "step_seconds",
        "tokens_per_sec",
        "sequences_per_sec",
        "compile_seconds",
        "peak_memory_bytes",
        "model_flops_per_step",
        "peak_flops",
        "mfu",
    ):
        assert np.isfinite(result[key]) and result[key] > 0, key
    assert result["devices"] == 2  # a real data-parallel mesh
    assert result["tokens_per_sec"] == pytest.approx(32 * result["sequences_per_sec"])
    tiny = model_config_for_size("tiny")
    assert result["model_flops_per_step"] == 4 * flops.finetuning_flops_per_sequence(tiny, 32, 3)
    assert result["mfu"] == pytest.approx(
        result["model_flops_per_step"] / result["step_seconds"] / result["peak_flops"]
    )
    assert np.isfinite(result["loss"])
