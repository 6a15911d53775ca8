"""The benchmark scripts' own logic: the profile summary's classification and the packing
benchmark's figures (the step benchmarks' smoke test is in test_flops.py)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import profile_step  # noqa: E402


def test_profile_classifies_phases_kinds_and_modules():
    hlo = "\n".join(
        [
            "  %ynn_fusion.3 = f32[8,3072]{1,0} fusion(%a), kind=kCustom, metadata={op_name="
            '"jit(train_step)/transpose(jvp(BertForPreTraining))/bert/encoder/layer_7/'
            'intermediate/dense/dot_general" stack_frame_id=1}',
            "  ROOT %add_select_fusion.2 = f32[768]{0} fusion(%b), kind=kLoop, metadata={op_name="
            '"jit(train_step)/jit(_where)/select_n"}',
            '  %x.1 = f32[2]{0} add(%c, %d), metadata={op_name="jit(train_step)/jvp('
            'BertForPreTraining)/bert/encoder/layer_0/attention/self/Dropout_0/ge"}',
        ]
    )
    names = profile_step.hlo_op_names(hlo)
    assert set(names) == {"ynn_fusion.3", "add_select_fusion.2", "x.1"}
    assert profile_step.classify("ynn_fusion.3", names["ynn_fusion.3"]) == (
        "backward",
        "matmul",
        "bert/encoder/layer/intermediate/dense",
    )
    assert profile_step.classify("add_select_fusion.2", names["add_select_fusion.2"]) == (
        "optimizer",
        "element-wise / reduce",
        "(outside the model)",
    )
    assert profile_step.classify("x.1", names["x.1"]) == (
        "forward",
        "dropout / RNG",
        "bert/encoder/layer/attention/self",
    )


def test_profile_step_runs_and_reads_its_trace(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "profile_step.py"),
        *("--size", "tiny", "--seq_len", "16", "--batch_size", "2", "--steps", "1"),
        *("--warmup", "1", "--logdir", str(tmp_path)),
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "by phase:" in res.stdout and "backward" in res.stdout and "matmul" in res.stdout
