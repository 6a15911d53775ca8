"""One command that measures what bertjax needs to know about an accelerator, in minutes.

    python -m benchmarks.accelerator_check --out runs/accel            # one GPU, < 8 minutes
    python -m benchmarks.accelerator_check --out /tmp/accel --dry_run  # CPU smoke run

Writes `--out`/accelerator_check.json and accelerator_check.md (rewritten after every part,
so a run stopped early still leaves what it measured) and prints the Markdown at the end.
One device is measured (the first), whatever the count.

Parts, in order (each one is skipped, and says so, when the time left cannot hold it):

1. **environment**: device kind, count and platform; Python, jax, jaxlib, flax, optax; the
   CUDA / cuDNN versions JAX's CUDA plugin reports; the GPU and driver from `nvidia-smi`.
2. **data**: a small pre-training dataset written with the project's own preparation
   (`create_pretraining_data` with the experiment's masking flags, dupe factor 1) in a
   temporary directory, from the embedded corpus (CPython's documentation) with a
   30,522-token WordPiece vocab. The batches are the input pipeline's own
   (`make_pretrain_iterator`): unpacked (the pairs' real lengths, padded to T) and packed
   (up to 3 pairs per row, block-diagonal attention).
3. **steps**: the real pre-training step (`pretrain.train_step`: MLM on the gathered
   positions + NSP, AdamW, clipping, dropout; jitted with donated state as `bertjax train`
   does) of `experiments/pretrain/bert_large.py:phase2` (seq 512, batch 32) and
   `bert_base.py:phase1` (seq 128, batch 256), bf16 compute with fp32 master weights,
   unpacked and packed: the median of single blocking steps after warm-up, padded and real
   (non-pad) tokens/s, pairs/s, MFU against the datasheet dense bf16 peak
   (`bertjax/flops.py`), XLA's memory analysis of the step, the allocator's peak so far,
   and whether the compiled HLO calls cuDNN's fused attention (a custom call whose target
   contains `__cudnn$fmha`).
4. **attention**: the attention op alone (forward + backward, bf16, the model's shapes, the
   masks of `model.padding_mask`) through `jax.nn.dot_product_attention`, with XLA's
   implementation and with `implementation="cudnn"`: the padding mask as the model passes
   it ([B, 1, 1, S]) and broadcast to [B, 1, T, S], the padding as sequence lengths, and
   the packed block-diagonal mask. Says which ones the cuDNN kernel takes, whether it is
   in the HLO, and the time against XLA's.
5. **input pipeline**: rows/s and pairs/s of `make_pretrain_iterator` on this host
   (through `benchmarks/input_pipeline.py`'s `run`, which also counts CPU-seconds),
   unpacked and packed, in-process (the configs' `data.num_workers=0`) and, where that
   gives less than twice what the step consumes, with grain workers; next to the rows/s
   the measured step consumes.
6. **steps, attention dropout 0**: the steps again with `model.attention_dropout_rate=0`,
   the configuration whose attention goes through `jax.nn.dot_product_attention` (with
   attention dropout the model computes the probabilities itself).
7. **largest batch**: the largest bert-large seq-512 batch whose step runs, without and
   with `model.remat`. The first probe is placed by XLA's memory analysis of the measured
   step against the allocator's limit, each later one by its predecessor's (doubling when
   there is none), then bisection to within 1/8; each probe is a compile and one step,
   out-of-memory errors (RESOURCE_EXHAUSTED) are caught. The probes use
   `model.scan_layers` (one compiled layer body) to keep the compiles short.

Targets, printed as pass / fail on a GPU and n/a elsewhere: bert-large seq 512 bf16 MFU
>= 50% (default recipe, unpacked); cuDNN fused attention in an unpacked step; packed faster
than unpacked in real tokens/s (each size).

Time: no part starts after `--budget_s` (420 s after the imports), and parts 4-6 leave
`--search_reserve_s` (100 s) to the batch search; a watchdog ends the process at
`--hard_limit_s` (465 s) whatever it is doing, after writing the files (exit status 2).
`--parts` reruns a subset. Compiles go through the persistent compilation cache
(`--compilation_cache_dir`, bertjax's default), so a rerun of the same shapes loads them.

`--dry_run` runs every part on CPU with a one-layer bert-tiny at seq 64, batch 2, a
generated corpus, 1 + 2 steps and a batch bound of 2 (tests/test_benchmarks.py runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertjax import flops, pretrain, sharding, trainer
from bertjax.config import model_config_from_config_dict
from bertjax.model import BertForPreTraining, padding_mask
from bertjax.optim import OptimConfig, learning_rate_schedule, make_optimizer
from data_pipelines.features import (
    ATTENTION_SEGMENT_IDS,
    INPUT_IDS,
    INPUT_MASK,
    MASKED_LM_POSITIONS,
    NEXT_SENTENCE_LABELS,
)

PARTS = ("steps", "attention", "pipeline", "steps_no_attention_dropout", "largest_batch")
FUSED_ATTENTION = "__cudnn$fmha"  # prefix of cuDNN's fused attention custom-call targets
TARGET_MFU = 0.50
BERT_VOCAB = 30522
START = time.monotonic()  # the time budget counts from here (after the imports)


@dataclasses.dataclass(frozen=True)
class Case:
    """One model and sequence length: an experiment config and the batch measured."""

    name: str  # "base128" / "large512" (kept in the dry run, which shrinks the sizes)
    experiment: str  # module under experiments/pretrain
    phase: str  # its config argument
    size: str  # model size (the experiment's, or "tiny" in the dry run)
    seq_len: int
    num_pred: int  # max_predictions_per_seq
    batch_size: int
    shape: tuple[tuple[str, int], ...] = ()  # model field overrides (the dry run's tiny model)

    @property
    def label(self) -> str:
        return f"bert-{self.size} seq {self.seq_len}"


def cases(args: argparse.Namespace) -> list[Case]:
    """bert-large first: its figures decide two of the three targets."""
    if args.dry_run:  # one case, one layer: every code path, few seconds per compile
        shape = (
            ("num_layers", 1),
            ("hidden_size", 32),
            ("num_heads", 2),
            ("intermediate_size", 64),
        )
        return [Case("large512", "bert_large", "phase2", "tiny", 64, 10, 2, shape)]
    return [
        Case("large512", "bert_large", "phase2", "large", 512, 80, args.large_batch_size),
        Case("base128", "bert_base", "phase1", "base", 128, 20, args.base_batch_size),
    ]


# --- Time budget and the report --------------------------------------------------------------


class Budget:
    """Seconds since START against the budget after which no part starts."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s

    @staticmethod
    def elapsed() -> float:
        return time.monotonic() - START

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


class Report:
    """The results, saved as JSON and Markdown after every part (under a lock: the
    watchdog thread may save while the main thread works)."""

    def __init__(self, out_dir: str, args: argparse.Namespace):
        self.out_dir = out_dir
        self.lock = threading.RLock()
        self.data: dict[str, Any] = {
            "complete": False,
            "dry_run": bool(args.dry_run),
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "environment": {},
            "data": {},
            "steps": [],
            "attention_probe": [],
            "input_pipeline": [],
            "largest_batch": {},
            "targets": {},
            "skipped": [],
            "errors": [],
            "elapsed_seconds": 0.0,
        }

    def add(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key].append(value)

    def set(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key] = value

    def skip(self, part: str, reason: str) -> None:
        log(f"skipped {part}: {reason}")
        self.add("skipped", {"part": part, "reason": reason})

    def error(self, part: str, exc: BaseException) -> None:
        log(f"error in {part}: {first_line(exc)}")
        self.add(
            "errors",
            {"part": part, "error": first_line(exc), "traceback": traceback.format_exc()[-3000:]},
        )

    def save(self) -> None:
        with self.lock:
            self.data["elapsed_seconds"] = round(Budget.elapsed(), 1)
            self.data["targets"] = evaluate_targets(self.data)
            text = json.dumps(self.data, indent=1, default=_json_default)
            md = markdown(self.data)
            os.makedirs(self.out_dir, exist_ok=True)
            for name, content in (("accelerator_check.json", text), ("accelerator_check.md", md)):
                path = os.path.join(self.out_dir, name)
                with open(path + ".tmp", "w", encoding="utf-8") as f:
                    f.write(content)
                os.replace(path + ".tmp", path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def log(message: str) -> None:
    print(f"[{Budget.elapsed():6.1f}s] {message}", flush=True)


def start_watchdog(report: Report, hard_limit_s: float) -> threading.Timer:
    """Ends the process at the hard limit, even inside a compile, after saving the files
    (cancel the returned timer to disarm it)."""

    def fire():
        try:
            report.add(
                "skipped",
                {
                    "part": "(remaining)",
                    "reason": f"hard time limit of {hard_limit_s:.0f} s reached",
                },
            )
            report.save()
            log(
                f"hard time limit of {hard_limit_s:.0f} s reached; files written to {report.out_dir}"
            )
        finally:
            os._exit(2)

    timer = threading.Timer(max(0.0, hard_limit_s - Budget.elapsed()), fire)
    timer.daemon = True
    timer.start()
    return timer


# --- Environment --------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def cuda_versions() -> dict[str, Any]:
    """What JAX's CUDA plugin reports (runtime, driver, cuDNN, cuBLAS, ...); {} elsewhere."""
    try:
        from jax._src.lib import cuda_versions as module
    except Exception:
        return {}
    if module is None:
        return {}
    out = {}
    for name in sorted(dir(module)):
        if name.endswith(("_get_version", "_build_version")):
            try:
                out[name] = getattr(module, name)()
            except Exception as e:  # a library the plugin cannot load
                out[name] = f"unavailable ({type(e).__name__})"
    return out


def nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        res = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return (res.stdout or res.stderr).strip() or None
    except Exception as e:
        return f"failed: {e}"


def environment() -> dict[str, Any]:
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    return {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "platform_version": getattr(dev.client, "platform_version", None),
        "compute_capability": getattr(dev, "compute_capability", None),
        "memory_limit_bytes": stats.get("bytes_limit"),
        "python": sys.version.split()[0],
        "host": platform.platform(),
        "host_cpus": os.cpu_count(),
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "numpy", "grain")},
        "cuda": cuda_versions(),
        "nvidia_smi": nvidia_smi(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_"))},
    }


def datasheet_peak(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device from flops.PEAK_FLOPS; None when unknown."""
    for name, peak in flops.PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


# --- Data ------------------------------------------------------------------------------------


_WORDS = (
    "the a of and to in is was model data text token word piece train test run fast slow big "
    "small good bad cat dog sat mat tree house car road river stone light dark cold warm old "
    "new long short high low open close left right north south east west"
).split()


def write_generated_corpus(path: str, num_docs: int, seed: int = 0) -> str:
    """Documents of 2..30 sentences of 3..24 words (BERT's text format), for the dry run."""
    rnd = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        sentences = [
            " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(3, 24))) + " ."
            for _ in range(rnd.randint(2, 30))
        ]
        docs.append("\n".join(sentences))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")
    return path


def experiment_config(case: Case):
    return importlib.import_module(f"experiments.pretrain.{case.experiment}").get_config(case.phase)


def prepare_data(args: argparse.Namespace, work: str, all_cases: list[Case]) -> dict[str, Any]:
    """A dataset per case in `work`: {"corpus", "tokenizer_vocab_size", "seconds", and per
    case name {"dir", "examples"}}."""
    from data_pipelines import corpus_sources
    from data_pipelines import pretraining_data as pdata
    from data_pipelines.tokenizers import load_tokenizer
    from data_pipelines.vocab import train_vocab

    t0 = time.perf_counter()
    if args.corpus:
        source, what = args.corpus, args.corpus
    elif args.dry_run:
        source = write_generated_corpus(os.path.join(work, "generated.txt"), num_docs=80)
        what = "generated (80 documents)"
    else:
        source = os.path.join(work, "embedded.txt")
        corpus_sources.write_embedded_corpus(source)
        what = "embedded (CPython's documentation)"
    if args.vocab:
        tokenizer = load_tokenizer(args.vocab)
    else:
        size = 400 if args.dry_run else BERT_VOCAB
        tokenizer = train_vocab(
            [source], kind="wordpiece", vocab_size=size, out_dir=os.path.join(work, "vocab")
        )
    out: dict[str, Any] = {"corpus": what, "tokenizer_vocab_size": tokenizer.vocab_size}
    for case in all_cases:
        c = experiment_config(case).data
        directory = os.path.join(work, case.name)
        info = pdata.create_pretraining_data(
            [source],
            tokenizer,
            directory,
            max_seq_length=case.seq_len,
            max_predictions_per_seq=case.num_pred,
            masked_lm_prob=c.masked_lm_prob,
            short_seq_prob=c.short_seq_prob,
            do_whole_word_mask=c.do_whole_word_mask,
            dupe_factor=args.dupe_factor,
            num_output_shards=4,
            progress=False,
        )
        out[case.name] = {"dir": directory, "examples": info.num_examples}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def pipeline_batch(data_dir: str, batch_size: int, packed: bool) -> dict[str, np.ndarray]:
    """The input pipeline's first shuffled batch (seed 0) of `batch_size` rows."""
    from data_pipelines.pretrain_input import make_pretrain_iterator

    it = make_pretrain_iterator(
        data_dir,
        global_batch_size=batch_size,
        seed=0,
        shuffle=True,
        num_epochs=None,
        process_index=0,
        process_count=1,
        packing=packed,
    )
    return dict(next(it))


def tile_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """`batch` repeated (or cut) to `rows` rows."""
    return {k: np.resize(v, (rows, *v.shape[1:])) for k, v in batch.items()}


def batch_counts(batch: dict[str, np.ndarray]) -> dict[str, float]:
    rows, t = batch[INPUT_IDS].shape
    real = float(batch[INPUT_MASK].sum())
    labels = batch[NEXT_SENTENCE_LABELS]
    pairs = float((labels >= 0).sum()) if labels.ndim == 2 else float(rows)
    return {"rows": rows, "real_tokens": real, "pairs": pairs, "padding": 1 - real / (rows * t)}


# --- The step ----------------------------------------------------------------------------------


def model_config(case: Case, vocab_size: int, **overrides: Any):
    """(ModelConfig, OptimConfig, num_steps) of the case's experiment, bf16 compute (fp32
    master weights, the configs' param_dtype), with model field overrides."""
    c = experiment_config(case)
    c.model.size = case.size
    c.model.vocab_size = vocab_size
    for k, v in case.shape:
        setattr(c.model, k, v)
    c.model.dtype = "bfloat16"
    for k, v in overrides.items():
        setattr(c.model, k, v)
    return (
        model_config_from_config_dict(c.model),
        OptimConfig.from_config_dict(c.optim),
        int(c.train.num_steps),
    )


@dataclasses.dataclass
class BuiltStep:
    compiled: Any
    state: Any
    batch: Any
    compile_seconds: float


def build_step(model_cfg, optim_cfg, num_steps: int, host_batch, mesh) -> BuiltStep:
    """pretrain.train_step jitted as `bertjax train` jits it (state shardings, donated
    state), a fresh state, the batch on the device, and the compiled executable."""
    model = BertForPreTraining(model_cfg)
    tx = make_optimizer(optim_cfg, num_steps)
    rules = sharding.DEFAULT_RULES
    seq_len = host_batch[INPUT_IDS].shape[1]
    num_pred = host_batch[MASKED_LM_POSITIONS].shape[1]
    with mesh, nn.logical_axis_rules(rules):
        init = functools.partial(
            pretrain.init_state, model=model, tx=tx, seq_len=seq_len, num_predictions=num_pred
        )
        seed_key = jax.random.key_data(jax.random.key(0))
        abstract = jax.eval_shape(init, seed_key)
        shardings = sharding.logical_shardings(mesh, rules, abstract)
        state = jax.jit(lambda k: nn.meta.unbox(init(k)), out_shardings=shardings)(seed_key)
        step = jax.jit(
            functools.partial(
                pretrain.train_step,
                model=model,
                tx=tx,
                schedule=learning_rate_schedule(optim_cfg, num_steps),
                grad_accum_steps=optim_cfg.grad_accum_steps,
            ),
            in_shardings=(shardings, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        batch = sharding.global_batch(mesh, rules, host_batch)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    return BuiltStep(compiled, state, batch, compile_s)


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """XLA's buffer sizes of an executable; `needed` = arguments + outputs - aliased + temp."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    out["needed"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def memory_stats() -> dict[str, int]:
    stats = jax.devices()[0].memory_stats() or {}
    return {
        k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats
    }


_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_BACKEND_KIND = re.compile(r'"kind":"(__[^"]+)"')


def attention_kernels(hlo: str) -> dict[str, Any]:
    """What a compiled module's HLO text says about fused attention: the cuDNN fused
    attention custom calls, and every custom-call target and backend fusion kind."""
    targets = _TARGET.findall(hlo)
    fused = sorted({t for t in targets if FUSED_ATTENTION in t})
    return {
        "hlo_checked": True,
        "fused_attention": bool(fused),
        "fused_attention_targets": fused,
        "fused_attention_calls": sum(FUSED_ATTENTION in t for t in targets),
        "fmha_anywhere_in_hlo": "fmha" in hlo.lower(),  # in case XLA renames the call
        "custom_call_targets": sorted(set(targets)),
        "backend_fusion_kinds": sorted(set(_BACKEND_KIND.findall(hlo))),
    }


def attention_path(model_cfg) -> str:
    if model_cfg.attention_dropout_rate > 0:
        return "einsum + fp32 softmax + dropout (probabilities materialised)"
    return "jax.nn.dot_product_attention (implementation left to JAX)"


def measure_step(
    case: Case,
    host_batch: dict[str, np.ndarray],
    model_cfg,
    optim_cfg,
    num_steps: int,
    mesh,
    args: argparse.Namespace,
    peak: float | None,
    *,
    packed: bool,
) -> dict[str, Any]:
    built = build_step(model_cfg, optim_cfg, num_steps, host_batch, mesh)
    hlo = attention_kernels(built.compiled.as_text())
    mem = memory_analysis(built.compiled)
    state, batch, compiled = built.state, built.batch, built.compiled
    compile_s, built = built.compile_seconds, None
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    loss = float(metrics["loss"])
    del state, batch, compiled, metrics
    step_s = statistics.median(times)
    counts = batch_counts(host_batch)
    rows, t = host_batch[INPUT_IDS].shape
    p = host_batch[MASKED_LM_POSITIONS].shape[1]
    step_flops = rows * flops.training_flops_per_sequence(model_cfg, t, p)
    return {
        "case": case.name,
        "model": case.label,
        "experiment": f"{case.experiment}:{case.phase}",
        "packed": packed,
        "attention_dropout": model_cfg.attention_dropout_rate,
        "attention_path": attention_path(model_cfg),
        "dtype": model_cfg.dtype,
        "param_dtype": model_cfg.param_dtype,
        "batch_size": rows,
        "seq_len": t,
        "prediction_slots": p,
        "pairs_per_row": counts["pairs"] / rows,
        "padding_fraction": counts["padding"],
        "compile_seconds": compile_s,
        "step_seconds": step_s,
        "step_seconds_timed": times,
        "tokens_per_sec": rows * t / step_s,
        "real_tokens_per_sec": counts["real_tokens"] / step_s,
        "pairs_per_sec": counts["pairs"] / step_s,
        "rows_per_sec": rows / step_s,
        "model_flops_per_step": step_flops,
        "model_tflops_per_sec": step_flops / step_s / 1e12,
        "mfu": step_flops / step_s / peak if peak else None,
        "xla_memory": mem,
        "memory_stats": memory_stats(),
        "loss": loss,
        **hlo,
    }


# --- Attention alone: XLA's and cuDNN's -----------------------------------------------------------

PROBES = (
    ("xla", "padding mask"),
    ("cudnn", "padding mask"),
    ("cudnn", "padding mask, [B, 1, T, S]"),
    ("cudnn", "padding as sequence lengths"),
    ("xla", "packed block-diagonal mask"),
    ("cudnn", "packed block-diagonal mask"),
)


def _attention_loss(q, k, v, cotangent, mask, lengths, *, implementation, how):
    if how == "padding as sequence lengths":
        out = jax.nn.dot_product_attention(
            q,
            k,
            v,
            query_seq_lengths=lengths,
            key_value_seq_lengths=lengths,
            implementation=implementation,
        )
    else:
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) * cotangent)  # [B, T, H, K] -> a scalar


def attention_probe(
    case: Case, model_cfg, unpacked: dict, packed: dict, args, budget: Budget
) -> list[dict[str, Any]]:
    """Forward + backward of jax.nn.dot_product_attention at the model's shapes, per
    implementation and mask (PROBES); the masks are the model's own (`padding_mask`)."""
    b, t = unpacked[INPUT_IDS].shape
    h, k = model_cfg.num_heads, model_cfg.head_dim
    rng = np.random.default_rng(0)
    q, key, v = (jnp.asarray(rng.standard_normal((b, t, h, k)), jnp.bfloat16) for _ in range(3))
    cotangent = jnp.asarray(rng.standard_normal((b, t, h, k)), jnp.float32)
    lengths = jnp.asarray(unpacked[INPUT_MASK].sum(1), jnp.int32)  # [B]
    pad = padding_mask({INPUT_MASK: jnp.asarray(unpacked[INPUT_MASK])})  # [B, 1, 1, S]
    masks = {
        "padding mask": pad,
        "padding mask, [B, 1, T, S]": jnp.broadcast_to(pad, (b, 1, t, t)),
        "packed block-diagonal mask": padding_mask(
            {
                INPUT_MASK: jnp.asarray(packed[INPUT_MASK]),
                ATTENTION_SEGMENT_IDS: jnp.asarray(packed[ATTENTION_SEGMENT_IDS]),
            }
        ),
    }
    out = []
    for implementation, how in PROBES:
        if not budget.allows(args.search_reserve_s + 5):
            out.append(
                {
                    "case": case.name,
                    "implementation": implementation,
                    "mask": how,
                    "skipped": "time budget",
                }
            )
            continue
        row: dict[str, Any] = {
            "case": case.name,
            "model": case.label,
            "shape_BTHK": [b, t, h, k],
            "implementation": implementation,
            "mask": how,
        }
        fn = jax.jit(
            jax.value_and_grad(
                functools.partial(_attention_loss, implementation=implementation, how=how),
                argnums=(0, 1, 2),
            )
        )
        mask = masks.get(how, masks["padding mask"])
        inputs = (q, key, v, cotangent, mask, lengths)
        try:
            t0 = time.perf_counter()
            compiled = fn.lower(*inputs).compile()
            row["compile_seconds"] = time.perf_counter() - t0
            row.update(attention_kernels(compiled.as_text()))
            times = []
            for i in range(2 + args.steps):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(*inputs))
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            row["supported"] = True
            row["fwd_bwd_ms"] = 1e3 * statistics.median(times)
        except Exception as e:  # cuDNN refuses the shape / mask, or is absent (CPU)
            row["supported"] = False
            row["error"] = first_line(e)
        out.append(row)
    return out


# --- Input pipeline ---------------------------------------------------------------------------------


def pipeline_throughput(
    data_dir: str, batch_size: int, seq_len: int, *, packed: bool, workers: int, seconds: float
) -> dict[str, Any]:
    """Rows/s and pairs/s of make_pretrain_iterator: through benchmarks/input_pipeline.py's
    `run` when that module is there (it also counts CPU-seconds and waits for the workers'
    buffers to fill), else timed here after the first batch."""
    try:
        from benchmarks import input_pipeline
    except ImportError:  # this file run on its own, without the benchmarks package
        input_pipeline = None
    out: dict[str, Any] = {"packed": packed, "workers": workers, "batch_size": batch_size}
    if input_pipeline is not None and hasattr(input_pipeline, "run"):
        settings = argparse.Namespace(batch_size=batch_size, seconds=seconds, smoke=False)
        r = input_pipeline.run(data_dir, packed, workers, seq_len, settings, wait=False)
        return {
            **out,
            "measured_by": "benchmarks/input_pipeline.py",
            "rows_per_sec": r["rows_per_second"],
            "pairs_per_sec": r["rows_per_second"] * r["pairs_per_row"],
            "rows_per_cpu_second": r.get("rows_per_cpu_second"),
            "details": r,
        }
    from data_pipelines.pretrain_input import make_pretrain_iterator

    it = make_pretrain_iterator(
        data_dir,
        global_batch_size=batch_size,
        seed=0,
        shuffle=True,
        num_epochs=None,
        process_index=0,
        process_count=1,
        worker_count=workers,
        packing=packed,
    )
    next(it)  # start-up: readers, pack plan, worker processes
    n = rows = pairs = 0.0
    t0 = time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        c = batch_counts(next(it))
        n, rows, pairs = n + 1, rows + c["rows"], pairs + c["pairs"]
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return {
        **out,
        "measured_by": "accelerator_check (wall clock after the first batch)",
        "rows_per_sec": rows / dt,
        "pairs_per_sec": pairs / dt,
    }


# --- Largest batch -------------------------------------------------------------------------------


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _round_down(x: float, granularity: int) -> int:
    return max(granularity, int(x) // granularity * granularity)


def search_batch(
    fits: Callable[[int], bool],
    *,
    start: int,
    lo: int,
    bound: int,
    granularity: int,
    time_ok: Callable[[], bool],
    next_up: Callable[[int], int | None] = lambda b: None,
) -> dict[str, Any]:
    """The largest batch <= `bound` for which fits(batch) holds, given that it holds at `lo`
    (0: nothing known). From `start`, up after each success (to next_up(b) when it names
    a larger batch, else doubling) until a failure, then bisecting until the bracket is
    within 1/8 or the granularity; stops early when time_ok() is False."""
    hi: int | None = None
    b = min(_round_down(start, granularity), bound)
    stopped, converged, probes = "time budget", False, 0
    while time_ok():
        probes += 1
        if fits(b):
            lo = b
            if hi is None:
                up = next_up(b)
                nxt = up if up is not None and up > b else 2 * b
            else:
                nxt = (lo + hi) // 2
        else:
            hi = b
            nxt = (lo + hi) // 2
        if lo >= bound:
            converged, stopped = True, f"search bound {bound} reached"
            break
        if hi is not None and hi - lo <= max(granularity, lo // 8):
            converged, stopped = True, "bracket within 1/8"
            break
        b = min(_round_down(nxt, granularity), bound)
        if hi is not None and not lo < b < hi:
            converged, stopped = True, "bracket within the granularity"
            break
    return {
        "largest_fitting": lo or None,
        "smallest_failing": hi,
        "converged": converged,
        "stopped": stopped,
    }


def rows_to_fill(mem: dict[str, int] | None, rows: int, limit: int | None) -> int | None:
    """Rows that fill `limit` bytes by XLA's memory analysis `mem` of a step of `rows`:
    its fixed part (state, batch) plus its temporaries scaled per row."""
    if not mem or not limit:
        return None
    fixed = mem["argument"] + mem["output"] - mem["alias"]
    if mem["temp"] <= 0 or limit <= fixed:
        return None
    return int((limit - fixed) / (mem["temp"] / rows))


def largest_batch(
    case: Case,
    host_batch: dict,
    vocab: int,
    mesh,
    args,
    budget: Budget,
    report: Report,
    measured: dict[str, Any] | None,
) -> None:
    """Without then with remat (the first half of the time left for the first), each
    probe a compile and one step of the tiled batch. With an allocator limit, XLA's memory
    analysis of the measured step places the first probe and each fitting probe's the next."""
    limit = memory_stats().get("bytes_limit")
    guess = rows_to_fill((measured or {}).get("xla_memory"), case.batch_size, limit)
    granularity = 1 if args.dry_run else 8
    probe_guess = (measured or {}).get("compile_seconds") or 30.0
    result: dict[str, Any] = {
        "case": case.name,
        "model": case.label,
        "packed": False,
        "scan_layers": args.search_scan_layers,
        "allocator_limit_bytes": limit,
        "estimate_from_measured_step": guess,
        "bound": args.search_max_batch,
    }
    report.set("largest_batch", result)
    no_remat_deadline = budget.elapsed() + budget.left() / 2
    lo_known = 0
    for remat in (False, True):
        cfg, ocfg, num_steps = model_config(
            case, vocab, remat=remat, scan_layers=args.search_scan_layers
        )
        probes: list[dict[str, Any]] = []

        def fits(b: int, cfg=cfg, ocfg=ocfg, num_steps=num_steps, probes=probes) -> bool:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"batch": b}
            built = state = metrics = None
            try:
                built = build_step(cfg, ocfg, num_steps, tile_rows(host_batch, b), mesh)
                row["xla_memory"] = memory_analysis(built.compiled)
                state, metrics = built.compiled(built.state, built.batch)
                jax.block_until_ready((state, metrics))
                row["fits"] = True
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                row["fits"] = False
                row["error"] = first_line(e)
            finally:
                built = state = metrics = None
                gc.collect()
            row["seconds"] = time.perf_counter() - t0
            probes.append(row)
            log(
                f"  batch {b}: {'runs' if row['fits'] else 'out of memory'} ({row['seconds']:.1f} s)"
            )
            return row["fits"]

        def next_up(b: int, probes=probes) -> int | None:
            est = rows_to_fill(probes[-1].get("xla_memory"), b, limit)
            if est is None:
                return None
            return _round_down(0.97 * est if est > 1.1 * b else 1.1 * b, granularity)

        def time_ok(probes=probes, remat=remat) -> bool:
            need = max([p["seconds"] for p in probes] + [probe_guess])
            if not remat:
                return budget.elapsed() + need <= no_remat_deadline and budget.allows(need)
            return budget.allows(need)

        log(f"largest batch, remat={remat}")
        if remat:  # what runs without remat runs with it: up from there
            start, lo = (2 * lo_known, lo_known) if lo_known else (case.batch_size, 0)
        else:
            start, lo = (_round_down(0.9 * guess, granularity) if guess else case.batch_size), 0
        found = search_batch(
            fits,
            start=start,
            lo=lo,
            bound=args.search_max_batch,
            granularity=granularity,
            time_ok=time_ok,
            next_up=next_up,
        )
        found["probes"] = probes
        if remat and lo_known:
            found["lower_bound_from"] = "the search without remat (remat only saves memory)"
        result["remat" if remat else "no_remat"] = found
        report.set("largest_batch", result)
        report.save()
        if not remat:
            lo_known = found["largest_fitting"] or 0


# --- Targets and the Markdown report ------------------------------------------------------------


def _step(data: dict, case: str, packed: bool, variant: str = "default") -> dict | None:
    for row in data["steps"]:
        if row["case"] == case and row["packed"] == packed and row["variant"] == variant:
            return row
    return None


def evaluate_targets(data: dict) -> dict[str, dict[str, Any]]:
    """pass / fail on a GPU, n/a elsewhere or when the figures are missing."""
    on_gpu = data["environment"].get("platform") == "gpu"

    def status(ok: bool | None) -> str:
        return "n/a" if ok is None or not on_gpu else ("pass" if ok else "fail")

    large = _step(data, "large512", packed=False)
    mfu = large["mfu"] if large else None
    unpacked = [r for r in data["steps"] if not r["packed"]]
    fused = [f"{r['case']} {r['variant']}" for r in unpacked if r["fused_attention"]]
    ratios = {}
    for case in ("base128", "large512"):
        a, b = _step(data, case, packed=False), _step(data, case, packed=True)
        if a and b:
            ratios[case] = b["real_tokens_per_sec"] / a["real_tokens_per_sec"]
    return {
        "large512_mfu_at_least_50pct": {
            "value": mfu,
            "status": status(None if mfu is None else mfu >= TARGET_MFU),
            "what": "bert-large seq 512 bf16, default recipe, unpacked: MFU >= 50%",
        },
        "fused_attention_unpacked": {
            "value": fused,
            "status": status(bool(fused) if unpacked else None),
            "what": "cuDNN fused attention (__cudnn$fmha*) in the HLO of an unpacked step",
        },
        "packing_faster_real_tokens": {
            "value": ratios,
            "status": status(all(r > 1 for r in ratios.values()) if ratios else None),
            "what": "packed / unpacked real (non-pad) tokens per second > 1, each size",
        },
    }


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _bytes(x: Any) -> str:
    if not x:
        return "—"
    return f"{x / 2**30:.1f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def markdown(data: dict) -> str:
    env = data["environment"]
    v = env.get("versions", {})
    cuda = env.get("cuda", {})
    lines = [
        "# Accelerator check" + (" (dry run: tiny model, CPU)" if data["dry_run"] else ""),
        "",
        f"Device: {env.get('device_kind')} × {env.get('device_count')} "
        f"({env.get('platform')}, {env.get('platform_version')}); peak "
        f"{_num(env.get('peak_flops'), '{:.3g}')} FLOP/s ({env.get('peak_source')}); "
        f"allocator limit {_bytes(env.get('memory_limit_bytes'))}.",
        f"Software: Python {env.get('python')}, jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, "
        f"flax {v.get('flax')}, optax {v.get('optax')}"
        + (
            f"; CUDA runtime {cuda.get('cuda_runtime_get_version')}, cuDNN "
            f"{cuda.get('cudnn_get_version')}"
            if cuda
            else ""
        )
        + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else "")
        + ".",
        f"Data: {data['data'].get('corpus')}; {data['elapsed_seconds']:.0f} s in all"
        + ("" if data["complete"] else " (incomplete)")
        + ".",
        "",
        "## Targets",
        "",
        "| target | value | status |",
        "|---|---|---|",
    ]
    for t in data["targets"].values():
        value = t["value"]
        if value is None or isinstance(value, float):
            value = _pct(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {r:.2f}×" for k, r in value.items()) or "—"
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        lines.append(f"| {t['what']} | {value} | {t['status']} |")
    lines += [
        "",
        "## Pre-training step (bf16 compute, fp32 master weights)",
        "",
        "| model | batch | packed | attention | step | tokens/s | real tokens/s | pairs/s "
        "| padding | MFU | TFLOP/s | XLA memory | allocator peak so far | cuDNN fused attention "
        "| compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["steps"]:
        attention = f"dropout {r['attention_dropout']:g}: {r['attention_path'].split(' (')[0]}"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {'yes' if r['packed'] else 'no'} | {attention} "
            f"| {1e3 * r['step_seconds']:.1f} ms | {_num(r['tokens_per_sec'])} "
            f"| {_num(r['real_tokens_per_sec'])} | {_num(r['pairs_per_sec'])} "
            f"| {_pct(r['padding_fraction'])} | {_pct(r['mfu'])} "
            f"| {r['model_tflops_per_sec']:.3g} | {_bytes((r['xla_memory'] or {}).get('needed'))} "
            f"| {_bytes(r['memory_stats'].get('peak_bytes_in_use'))} "
            f"| {'yes: ' + ', '.join(r['fused_attention_targets']) if r['fused_attention'] else 'no'} "
            f"| {r['compile_seconds']:.1f} s |"
        )
    if data["attention_probe"]:
        lines += [
            "",
            "## Attention alone (jax.nn.dot_product_attention, forward + backward, bf16)",
            "",
            "| model | B, T, H, K | implementation | mask | runs | fused kernel in HLO | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["attention_probe"]:
            runs = r.get("skipped") or ("yes" if r.get("supported") else f"no: {r.get('error')}")
            lines.append(
                f"| {r.get('model', r['case'])} | {r.get('shape_BTHK', '')} | {r['implementation']} "
                f"| {r['mask']} | {runs} | {'yes' if r.get('fused_attention') else 'no'} "
                f"| {_num(r.get('fwd_bwd_ms'), '{:.2f} ms')} |"
            )
    if data["input_pipeline"]:
        lines += [
            "",
            "## Input pipeline on this host (make_pretrain_iterator) against the step",
            "",
            "| model | packed | workers | rows/s | rows per CPU-second | pairs/s "
            "| step consumes rows/s | margin |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["input_pipeline"]:
            lines.append(
                f"| {r['model']} | {'yes' if r['packed'] else 'no'} | {r['workers']} "
                f"| {_num(r['rows_per_sec'])} | {_num(r.get('rows_per_cpu_second'))} "
                f"| {_num(r['pairs_per_sec'])} "
                f"| {_num(r.get('step_rows_per_sec'))} | {_num(r.get('margin'), '{:.2f}×')} |"
            )
        measured_by = sorted({r["measured_by"] for r in data["input_pipeline"]})
        lines += [
            "",
            f"Measured by {', '.join(measured_by)}; margin = the pipeline's rows/s "
            "over the step's.",
        ]
    lb = data["largest_batch"]
    if lb:
        lines += [
            "",
            f"## Largest batch that runs: {lb['model']}, unpacked"
            + (" (probes with scan_layers)" if lb["scan_layers"] else ""),
            "",
            "| remat | largest that ran | smallest that ran out of memory | probes | stopped |",
            "|---|---|---|---|---|",
        ]
        for key, name in (("no_remat", "no"), ("remat", "yes")):
            if key in lb:
                s = lb[key]
                lines.append(
                    f"| {name} | {_num(s['largest_fitting'])} | {_num(s['smallest_failing'])} "
                    f"| {len(s['probes'])} | {s['stopped']} |"
                )
    if data["skipped"] or data["errors"]:
        lines += ["", "## Skipped and failed", ""]
        lines += [f"- skipped {s['part']}: {s['reason']}" for s in data["skipped"]]
        lines += [f"- error in {e['part']}: {e['error']}" for e in data["errors"]]
    return "\n".join(lines) + "\n"


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the JSON and Markdown files")
    p.add_argument("--dry_run", action="store_true", help="CPU smoke run: tiny sizes, few steps")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget_s", type=float, help="no part starts after this (420; dry 240)")
    p.add_argument("--hard_limit_s", type=float, help="the process ends here (465; dry 300)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (10; dry 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (3; dry 1)")
    p.add_argument("--base_batch_size", type=int, default=256, help="bert-base seq 128 rows")
    p.add_argument("--large_batch_size", type=int, default=32, help="bert-large seq 512 rows")
    p.add_argument("--search_max_batch", type=int, help="largest batch tried (4096; dry 2)")
    p.add_argument(
        "--search_scan_layers",
        action=argparse.BooleanOptionalAction,
        help="batch-search probes with model.scan_layers (on; dry run: off, so that its first "
        "probe is the measured step, from the compilation cache)",
    )
    p.add_argument(
        "--search_reserve_s",
        type=float,
        help="seconds kept for the batch search from parts 4-6 (100; dry 0)",
    )
    p.add_argument("--pipeline_workers", type=int, nargs="+", help="grain workers (0 8; dry 0)")
    p.add_argument("--pipeline_seconds", type=float, help="per pipeline measurement (4; dry 0.3)")
    p.add_argument("--dupe_factor", type=int, default=1, help="of the prepared data")
    p.add_argument("--corpus", help="text in BERT's format (default: embedded / generated)")
    p.add_argument("--vocab", help="vocab.txt or tokenizer directory (default: train one)")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    p.add_argument(
        "--compilation_cache_dir",
        default=os.path.join(cache, "bertjax", "xla"),
        help="persistent XLA cache ('' turns it off; JAX_COMPILATION_CACHE_DIR wins)",
    )
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = {
        "budget_s": 240.0 if dry else 420.0,
        "hard_limit_s": 300.0 if dry else 465.0,
        "steps": 2 if dry else 10,
        "warmup": 1 if dry else 3,
        "search_max_batch": 2 if dry else 4096,
        "search_scan_layers": not dry,
        "search_reserve_s": 0.0 if dry else 100.0,
        "pipeline_workers": [0] if dry else [0, min(8, os.cpu_count() or 1)],
        "pipeline_seconds": 0.3 if dry else 4.0,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


@dataclasses.dataclass
class Run:
    """What the parts share."""

    args: argparse.Namespace
    report: Report
    budget: Budget
    mesh: Any
    cases: list[Case]
    data: dict[str, Any]
    batches: dict[str, dict[bool, dict[str, np.ndarray]]]  # case -> packed -> host batch
    vocab: int
    peak: float | None
    compile_guess: dict[str, float] = dataclasses.field(default_factory=dict)


def part_steps(run: Run, variant: str, reserve: float) -> None:
    """Every case, unpacked then packed; `variant` "default" is the experiment's model,
    "no attention dropout" sets attention_dropout_rate=0."""
    overrides = {} if variant == "default" else {"attention_dropout_rate": 0.0}
    for case in run.cases:
        for packed in (False, True):
            what = f"step {case.label} packed={packed} {variant}"
            need = run.compile_guess.get(case.name, 0.0) + reserve
            if not run.budget.allows(max(need, 1.0)):
                run.report.skip(what, f"{run.budget.left():.0f} s left, needs ~{need:.0f} s")
                continue
            cfg, ocfg, num_steps = model_config(case, run.vocab, **overrides)
            log(f"{what}: compiling")
            try:
                row = measure_step(
                    case,
                    run.batches[case.name][packed],
                    cfg,
                    ocfg,
                    num_steps,
                    run.mesh,
                    run.args,
                    run.peak,
                    packed=packed,
                )
            except Exception as e:
                run.report.error(what, e)
                continue
            finally:
                gc.collect()
            row["variant"] = variant
            guess = row["compile_seconds"] * 1.2 + 2
            run.compile_guess[case.name] = max(run.compile_guess.get(case.name, 0.0), guess)
            run.report.add("steps", row)
            run.report.save()
            log(
                f"  {1e3 * row['step_seconds']:.1f} ms/step, {row['real_tokens_per_sec']:,.0f} "
                f"real tokens/s, MFU {_pct(row['mfu'])}, fused attention "
                f"{row['fused_attention']}, compile {row['compile_seconds']:.1f} s"
            )


def part_attention(run: Run) -> None:
    for case in run.cases:
        cfg, _, _ = model_config(case, run.vocab)
        b = run.batches[case.name]
        for row in attention_probe(case, cfg, b[False], b[True], run.args, run.budget):
            run.report.add("attention_probe", row)
        log(f"attention probe {case.label} done")


def part_pipeline(run: Run) -> None:
    """In-process first (the configs' data.num_workers=0); grain workers then only where
    the in-process pipeline has less than twice the rows/s the step consumes."""
    margins: dict[tuple[str, bool], float] = {}
    for i, workers in enumerate(run.args.pipeline_workers):
        for case in run.cases:
            for packed in (False, True):
                if i and margins.get((case.name, packed), 0.0) >= 2.0:
                    continue
                what = f"input pipeline {case.label} packed={packed} workers={workers}"
                if not run.budget.allows(
                    run.args.search_reserve_s + run.args.pipeline_seconds + 10
                ):
                    run.report.skip(what, "time budget")
                    continue
                row = pipeline_throughput(
                    run.data[case.name]["dir"],
                    case.batch_size,
                    case.seq_len,
                    packed=packed,
                    workers=workers,
                    seconds=run.args.pipeline_seconds,
                )
                row.update(case=case.name, model=case.label)
                step = _step(run.report.data, case.name, packed)
                if step:
                    row["step_rows_per_sec"] = step["rows_per_sec"]
                    row["margin"] = row["rows_per_sec"] / step["rows_per_sec"]
                    margins.setdefault((case.name, packed), row["margin"])
                run.report.add("input_pipeline", row)
                log(f"{what}: {row['rows_per_sec']:,.0f} rows/s")


def part_search(run: Run) -> None:
    case = run.cases[0]  # bert-large seq 512
    if not run.budget.allows(10):
        run.report.skip("largest batch", f"{run.budget.left():.0f} s left")
        return
    log(f"largest batch {case.label}")
    largest_batch(
        case,
        run.batches[case.name][False],
        run.vocab,
        run.mesh,
        run.args,
        run.budget,
        run.report,
        _step(run.report.data, case.name, packed=False),
    )


def run_part(report: Report, part: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:
        report.error(part, e)
    finally:
        gc.collect()
        report.save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(args.out, args)
    watchdog = start_watchdog(report, args.hard_limit_s)
    try:
        return check(args, report, Budget(args.budget_s))
    finally:
        watchdog.cancel()


def check(args: argparse.Namespace, report: Report, budget: Budget) -> int:
    """Every part of `args.parts` in order; returns the exit status."""
    cache = trainer.use_compilation_cache(args.compilation_cache_dir or None)
    env = environment()
    peak = datasheet_peak(env["device_kind"])
    env.update(
        peak_flops=peak,
        peak_source="datasheet dense bf16 (bertjax/flops.py)" if peak else "no datasheet peak",
        compilation_cache=cache,
    )
    report.set("environment", env)
    report.save()
    log(f"{env['device_kind']} x {env['device_count']} ({env['platform']}), peak {peak}")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1), jax.devices()[:1])
    all_cases = cases(args)
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as work:
        try:
            data = prepare_data(args, work, all_cases)
            batches = {
                c.name: {
                    p: pipeline_batch(data[c.name]["dir"], c.batch_size, p) for p in (False, True)
                }
                for c in all_cases
            }
        except Exception as e:
            report.error("data", e)
            report.save()
            return 1
        report.set("data", data)
        log(f"data prepared in {data['seconds']:.1f} s: {data['corpus']}")
        vocab = data["tokenizer_vocab_size"]
        run = Run(
            args,
            report,
            budget,
            mesh,
            all_cases,
            data,
            batches,
            vocab if args.dry_run else max(BERT_VOCAB, vocab),
            peak,
        )
        plan = (
            ("steps", lambda: part_steps(run, "default", 0.0)),
            ("attention", lambda: part_attention(run)),
            ("pipeline", lambda: part_pipeline(run)),
            (
                "steps_no_attention_dropout",
                lambda: part_steps(run, "no attention dropout", args.search_reserve_s),
            ),
            ("largest_batch", lambda: part_search(run)),
        )
        for part, fn in plan:
            if part in args.parts:
                run_part(report, part, fn)
    report.set("complete", True)
    report.save()
    print(markdown(report.data), flush=True)
    log(f"wrote {os.path.join(args.out, 'accelerator_check.json')} and accelerator_check.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
