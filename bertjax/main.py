"""`bertjax <command>`: the only place that defines command-line flags.

Each command defines its own absl flags on a fresh `FlagValues`, so `bertjax CMD --help`
lists exactly that command's flags and `main()` can be called more than once in a process.
Errors caused by the user's input (bad files, bad values) are reported as one line naming the
problem, with exit status 1 (`is_user_error` draws the line); a bug keeps its traceback.
"""

from __future__ import annotations

import ast
import contextlib
import dis
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from absl import flags

USAGE = """usage: bertjax <command> [flags]

commands:
  convert    import a Hugging Face / Google TF1 BERT checkpoint, or export one
  features   write contextual token features (hidden states) of a checkpoint as JSON lines
  corpus     write a corpus in BERT's text format: the embedded one or a TFDS text dataset
  vocab      train a WordPiece or SentencePiece vocab on text files
  prepare    create pre-training examples (MLM + NSP) as sharded ArrayRecord files
  train      pre-train BERT (MLM + NSP) from an experiment config; resumes from --workdir
  finetune   fine-tune a checkpoint on one GLUE task, SQuAD or NER from an experiment config
  ner        find named entities in raw text (one sentence a line) with a fine-tuned NER model
  glue       fine-tune and evaluate a checkpoint on the GLUE suite; results + submission files
  smoke      build a tiny model, run one forward/backward step and print the loss

`bertjax <command> --help` lists a command's flags.
"""


def _define_input_errors(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum(
        "input_errors",
        "strict",
        ["strict", "replace", "ignore"],
        "Invalid UTF-8 in the input text: 'strict' stops with an error naming file:line; "
        "'replace' reads the bytes as U+FFFD, 'ignore' drops them (both warn, naming the "
        "first such file:line).",
        flag_values=fv,
    )


def _define_convert(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_enum(
        "from", None, ["hf", "tf"], "Import from this format into bertjax.", flag_values=fv
    )
    flags.DEFINE_enum(
        "to", None, ["hf", "tf"], "Export a bertjax checkpoint to this format.", flag_values=fv
    )
    flags.DEFINE_string(
        "src",
        None,
        "Source checkpoint directory (or TF checkpoint prefix); with --from hf also a Hugging "
        "Face Hub model id (bert-base-uncased, org/name) where no such path exists.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out", None, "Output directory (must be empty unless --overwrite).", flag_values=fv
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.", flag_values=fv)
    flags.DEFINE_bool(
        "skip_unknown", False, "Drop tensors that are not part of BERT (import).", flag_values=fv
    )
    flags.mark_flags_as_required(["src", "out"], flag_values=fv)


def _run_convert(fv: flags.FlagValues) -> None:
    from bertjax import convert

    src_kind, dst_kind = fv["from"].value, fv.to
    if (src_kind is None) == (dst_kind is None):
        raise UsageError("give exactly one of --from hf|tf (import) or --to hf|tf (export)")
    if src_kind:
        out = convert.convert_to_bertjax(
            src_kind, fv.src, fv.out, overwrite=fv.overwrite, skip_unknown=fv.skip_unknown
        )
    else:
        out = convert.convert_from_bertjax(dst_kind, fv.src, fv.out, overwrite=fv.overwrite)
    print(f"wrote {out}")


def _define_features(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("checkpoint", None, "bertjax checkpoint directory.", flag_values=fv)
    flags.DEFINE_string(
        "input", None, "Text file: one sentence, or `text_a ||| text_b`, a line.", flag_values=fv
    )
    flags.DEFINE_string("output", None, "Output JSON-lines file.", flag_values=fv)
    flags.DEFINE_list(
        "layers", ["-1", "-2", "-3", "-4"], "Layers to write; -1 is the last.", flag_values=fv
    )
    flags.DEFINE_integer(
        "max_seq_length", 128, "Sequences are truncated to this many tokens.", flag_values=fv
    )
    flags.DEFINE_integer("batch_size", 32, "Sequences per forward pass.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output file.", flag_values=fv)
    flags.DEFINE_enum(
        "format",
        "bertjax",
        ["bertjax", "google"],
        "Output layout: 'bertjax' ({line, tokens, layers: {index: [[D] per token]}}) or "
        "'google', that of google-research/bert's extract_features.py ({linex_index, "
        "features: [{token, layers: [{index, values}]}]}).",
        flag_values=fv,
    )
    _define_input_errors(fv)
    flags.mark_flags_as_required(["checkpoint", "input", "output"], flag_values=fv)


def _run_features(fv: flags.FlagValues) -> None:
    from bertjax.extract_features import extract_features

    try:
        layers = [int(x) for x in fv.layers]
    except ValueError as e:
        raise UsageError(f"--layers={','.join(fv.layers)}: not a list of integers") from e
    n = extract_features(
        fv.checkpoint,
        fv.input,
        fv.output,
        layers=layers,
        max_seq_length=fv.max_seq_length,
        batch_size=fv.batch_size,
        overwrite=fv.overwrite,
        input_errors=fv.input_errors,
        output_format=fv.format,
    )
    print(f"wrote features of {n} lines to {fv.output}")


def _define_finetune(fv: flags.FlagValues, argv: list[str]) -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "GLUE, SQuAD or NER experiment config, e.g. experiments/glue/mrpc.py, "
        "experiments/squad/v1.py or experiments/ner/conll2003.py; override fields with "
        "--config.init_checkpoint=CKPT --config.task.data_dir=glue_data.",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory (best checkpoint, metrics, submission).", flag_values=fv
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _run_loop(command: str, loop: Callable[..., Any], *args: Any) -> Any:
    """Runs a training loop: preemption (SIGTERM, a checkpoint saved) exits 143, Ctrl-C
    (SIGINT, a checkpoint saved) 130, a stop for non-finite values exits 1 with one line."""
    from bertjax import trainer

    try:
        return loop(*args)
    except trainer.Preempted as e:
        print(str(e))
        sys.exit(e.exit_status)
    except trainer.NonFiniteError as e:
        print(f"bertjax {command}: error: {e}", file=sys.stderr)
        sys.exit(1)


def _run_finetune(fv: flags.FlagValues) -> None:
    from bertjax.finetune import RESULTS_FILE, format_value
    from bertjax.tasks import finetune

    out = _run_loop("finetune", finetune, fv.config, fv.workdir)
    if out.get("already_complete"):
        print(
            f"{fv.workdir} already holds the finished run of this config; nothing to do. "
            f"Results are in its {RESULTS_FILE}."
        )
    metrics = " ".join(f"{k}={format_value(k, v)}" for k, v in sorted(out["metrics"].items()))
    print(
        f"{out['task']}: best dev (epoch {out['best_epoch']}): {metrics}; "
        f"checkpoint {out['best_dir']}"
    )


def _define_ner(fv: flags.FlagValues, argv: list[str]) -> None:
    del argv
    flags.DEFINE_string(
        "checkpoint", None, "Fine-tuned NER model (a finetune run's WORKDIR/best).", flag_values=fv
    )
    flags.DEFINE_string(
        "input", None, "Text file: one sentence a line, raw text (Chinese without spaces).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "output", None, "JSON-lines output (default: print to stdout).", flag_values=fv
    )
    flags.DEFINE_integer(
        "max_seq_length", 128, "Tokens per window; longer sentences are windowed.", flag_values=fv
    )
    flags.DEFINE_integer("batch_size", 32, "Windows per forward pass.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output file.", flag_values=fv)
    flags.DEFINE_enum(
        "aggregation", "first", ["first", "simple"],
        "Entities as transformers' token-classification aggregation_strategy: first (each "
        "word's tag at its first piece, the BERT paper's rule) or simple (every piece's tag).",
        flag_values=fv,
    )  # fmt: skip
    _define_input_errors(fv)
    flags.mark_flags_as_required(["checkpoint", "input"], flag_values=fv)


def _run_ner(fv: flags.FlagValues) -> None:
    import json

    from bertjax.ner import tag_file

    records = tag_file(
        fv.checkpoint,
        fv.input,
        fv.output,
        max_seq_length=fv.max_seq_length,
        batch_size=fv.batch_size,
        overwrite=fv.overwrite,
        input_errors=fv.input_errors,
        aggregation=fv.aggregation,
    )
    if fv.output:
        n = sum(len(r["entities"]) for r in records)
        print(f"wrote {n} entities of {len(records)} lines to {fv.output}")
    else:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))


def _define_glue(fv: flags.FlagValues, argv: list[str]) -> None:
    del argv
    flags.DEFINE_string(
        "checkpoint", None, "bertjax checkpoint dir or pre-training workdir.", flag_values=fv
    )
    flags.DEFINE_string(
        "tasks",
        "all",
        "'all' or a comma-separated list (cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli,ax).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "GLUE directory in the standard layout, or 'tfds'.", flag_values=fv
    )
    flags.DEFINE_string("workdir", None, "Output directory.", flag_values=fv)
    flags.DEFINE_integer("seeds", 1, "Seeds per task; the median is reported.", flag_values=fv)
    flags.DEFINE_bool(
        "sweep",
        False,
        "BERT paper grid: lr in {5e-5,4e-5,3e-5,2e-5}, batch 32, 3 epochs, best lr on dev.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_train_examples", 0, "Cap on training examples (0 = all).", flag_values=fv
    )
    flags.DEFINE_float("num_epochs", None, "Epochs (default: the task config's).", flag_values=fv)
    flags.DEFINE_integer("max_seq_length", 128, "Tokens per example.", flag_values=fv)
    flags.DEFINE_float(
        "learning_rate", None, "Learning rate (default: the task config's).", flag_values=fv
    )
    flags.DEFINE_integer(
        "batch_size", None, "Batch size (default: the task config's).", flag_values=fv
    )
    flags.DEFINE_bool("overwrite", False, "Re-run tasks whose results exist.", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "data_dir", "workdir"], flag_values=fv)


def _run_glue(fv: flags.FlagValues) -> None:
    from bertjax.glue import run_glue

    tasks = "all" if fv.tasks == "all" else [t.strip() for t in fv.tasks.split(",") if t.strip()]
    out = run_glue(
        fv.checkpoint,
        task_configs=glue_task_config,
        tasks=tasks,
        data_dir=fv.data_dir,
        workdir=fv.workdir,
        seeds=fv.seeds,
        sweep=fv.sweep,
        max_train_examples=fv.max_train_examples,
        num_epochs=fv.num_epochs,
        max_seq_length=fv.max_seq_length,
        learning_rate=fv.learning_rate,
        batch_size=fv.batch_size,
        overwrite=fv.overwrite,
    )
    print(f"GLUE average: {out.get('average')}; results in {fv.workdir}/glue_results.json")
    if out.get("failed"):  # skipped (missing data) or failed: the summary names them
        names = ", ".join(sorted(out["failed"]))
        print(f"bertjax glue: error: task(s) skipped or failed: {names}", file=sys.stderr)
        sys.exit(1)


def _define_smoke(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("size", "tiny", "Model size from the size table.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Sequences in the batch.", flag_values=fv)
    flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.", flag_values=fv)


def _run_smoke(fv: flags.FlagValues) -> None:
    import jax
    import numpy as np
    import optax

    from bertjax.config import model_config_for_size
    from bertjax.losses import pretraining_loss
    from bertjax.model import BertForPreTraining

    if fv.batch_size < 1 or fv.seq_len < 4:
        raise UsageError(
            f"--batch_size={fv.batch_size} --seq_len={fv.seq_len}: need a batch of at least 1 "
            "and at least 4 tokens ([CLS], two segments, [SEP])"
        )

    config = model_config_for_size(fv.size, vocab_size=1024)
    model = BertForPreTraining(config)
    rng = np.random.default_rng(0)
    b, t, p = fv.batch_size, fv.seq_len, max(1, fv.seq_len * 15 // 100)
    batch = {
        "input_ids": rng.integers(5, config.vocab_size, (b, t)).astype(np.int32),
        "input_mask": np.ones((b, t), np.int32),
        "segment_ids": (np.arange(t) >= t // 2).astype(np.int32)[None].repeat(b, 0),
        "masked_lm_positions": rng.integers(1, t, (b, p)).astype(np.int32),
        "masked_lm_ids": rng.integers(5, config.vocab_size, (b, p)).astype(np.int32),
        "masked_lm_weights": np.ones((b, p), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (b,)).astype(np.int32),
    }
    variables = model.init(jax.random.key(0), batch, train=False)
    params = variables["params"]

    @jax.jit
    def loss_and_grads(params, batch, key):
        def loss_fn(params):
            out = model.apply({"params": params}, batch, train=True, rngs={"dropout": key})
            return pretraining_loss(out["mlm_logits"], out["nsp_logits"], batch)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return metrics, optax.global_norm(grads)

    metrics, gnorm = loss_and_grads(params, batch, jax.random.key(1))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"model={fv.size} params={n_params:,} devices={jax.devices()}")
    print(
        f"loss={float(metrics['loss']):.4f} mlm_loss={float(metrics['mlm_loss']):.4f} "
        f"nsp_loss={float(metrics['nsp_loss']):.4f} grad_norm={float(gnorm):.4f}"
    )


def _define_corpus(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string(
        "source",
        "embedded",
        "'embedded' (Python's own documentation, offline) "
        "or tfds:NAME, e.g. tfds:wikipedia/20230601.en.",
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "Output file (embedded) or directory (tfds).", flag_values=fv)
    flags.DEFINE_string("split", "train", "TFDS split.", flag_values=fv)
    flags.DEFINE_string("text_field", "text", "TFDS feature holding the text.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", flag_values=fv)
    flags.DEFINE_integer("num_shards", 1, "TFDS: output files.", flag_values=fv)
    flags.DEFINE_bool(
        "download", False, "TFDS: download and prepare the dataset if missing.", flag_values=fv
    )
    flags.mark_flags_as_required(["out"], flag_values=fv)


def _run_corpus(fv: flags.FlagValues) -> None:
    import time

    from data_pipelines import corpus_sources

    start = time.perf_counter()
    if fv.source == "embedded":
        if os.path.exists(fv.out):
            raise FileExistsError(f"{fv.out}: already exists; remove it or choose another --out")
        stats = corpus_sources.write_embedded_corpus(fv.out)
    elif fv.source.startswith("tfds:"):
        stats = corpus_sources.export_tfds_corpus(
            fv.source[len("tfds:") :],
            fv.out,
            split=fv.split,
            text_field=fv.text_field,
            data_dir=fv.data_dir,
            num_shards=fv.num_shards,
            download=fv.download,
        )
    else:
        raise UsageError(f"--source={fv.source!r}: use 'embedded' or tfds:NAME")
    print(corpus_summary(stats, time.perf_counter() - start))


def _duration(seconds: float) -> str:
    """3.2 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _size(num_bytes: int) -> str:
    """2.9 MB, 20.3 GB (decimal units, as tqdm's byte counts)."""
    value, unit = float(num_bytes), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{num_bytes} B" if unit == "B" else f"{value:.1f} {unit}"


def corpus_summary(stats: Any, seconds: float) -> str:
    """What `bertjax corpus` prints: a few aligned lines from its `CorpusStats`."""
    files = [os.path.basename(f) for f in stats.files or [stats.path]]
    names = f"{len(files)} ({files[0]}{f' ... {files[-1]}' if len(files) > 1 else ''})"
    rows = [
        ("output", stats.path),
        ("documents", f"{stats.num_documents:,}"),
        ("sentences", f"{stats.num_sentences:,} (lines)"),
        ("size", f"{_size(stats.num_bytes)} ({stats.num_bytes:,} bytes)"),
        ("files", names),
        ("time", _duration(seconds)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["corpus written:"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def _define_vocab(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("input", None, "Text files (glob, comma-separated globs).", flag_values=fv)
    flags.DEFINE_enum(
        "kind", "wordpiece", ["wordpiece", "sentencepiece"], "Vocab type.", flag_values=fv
    )
    flags.DEFINE_integer(
        "vocab_size", 30522, "Vocab size, special and unused tokens included.", flag_values=fv
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=fv)
    flags.DEFINE_bool(
        "do_lower_case", True, "Uncased vocab (lowercase, strip accents).", flag_values=fv
    )
    flags.DEFINE_integer("num_unused", 100, "[unusedN] slots reserved.", flag_values=fv)
    flags.DEFINE_integer(
        "pad_to_multiple_of", None, "Pad the size up to a multiple (e.g. 128).", flag_values=fv
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing vocab in --out.", flag_values=fv)
    _define_input_errors(fv)
    flags.mark_flags_as_required(["input", "out"], flag_values=fv)


def _run_vocab(fv: flags.FlagValues) -> None:
    from data_pipelines.vocab import train_vocab

    tok = train_vocab(
        fv.input,
        kind=fv.kind,
        vocab_size=fv.vocab_size,
        out_dir=fv.out,
        do_lower_case=fv.do_lower_case,
        num_unused=fv.num_unused,
        pad_to_multiple_of=fv.pad_to_multiple_of,
        overwrite=fv.overwrite,
        input_errors=fv.input_errors,
    )
    print(f"wrote a {tok.vocab_size}-token {fv.kind} vocab to {fv.out}")


# google-research/bert's create_pretraining_data.py names for prepare's file flags (its
# other flags have the same names here), so that its scripts run unchanged.
_GOOGLE_PREPARE_FLAGS = {"input": "input_file", "output": "output_file", "vocab": "vocab_file"}


def _define_prepare(fv: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string(
        "input", None, "Text files in BERT's format (glob, comma-separated).", flag_values=fv
    )
    flags.DEFINE_string(
        "vocab", None, "vocab.txt, SentencePiece model, or checkpoint directory.", flag_values=fv
    )
    flags.DEFINE_string("output", None, "Output directory of shards.", flag_values=fv)
    for ours, google in _GOOGLE_PREPARE_FLAGS.items():
        flags.DEFINE_string(
            google, None, f"google-research/bert's name for --{ours}.", flag_values=fv
        )
    flags.DEFINE_bool(
        "do_lower_case", None, "Lowercase input (default: from the vocab).", flag_values=fv
    )
    flags.DEFINE_integer("max_seq_length", 128, "Tokens per example.", flag_values=fv)
    flags.DEFINE_integer(
        "max_predictions_per_seq", 20, "Masked positions per example.", flag_values=fv
    )
    flags.DEFINE_float("masked_lm_prob", 0.15, "Share of tokens masked.", flag_values=fv)
    flags.DEFINE_integer(
        "dupe_factor", 10, "Passes over the input with different masks.", flag_values=fv
    )
    flags.DEFINE_float("short_seq_prob", 0.1, "Share of shorter examples.", flag_values=fv)
    flags.DEFINE_integer("random_seed", 12345, "Seed.", flag_values=fv)
    flags.DEFINE_bool("do_whole_word_mask", False, "Mask whole words.", flag_values=fv)
    flags.DEFINE_bool(
        "dynamic_masking", False, "Store unmasked pairs; mask per epoch.", flag_values=fv
    )
    flags.DEFINE_integer("num_shards", 8, "Output shards.", flag_values=fv)
    flags.DEFINE_integer(
        "num_workers",
        None,
        "Worker processes (default: one per 8 MB of input, up to the cores; 1 runs everything "
        "in this process).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "output_format",
        "arrayrecord",
        ["arrayrecord", "tfrecord"],
        "ArrayRecord (for training) or TFRecord (google-research/bert's format).",
        flag_values=fv,
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.", flag_values=fv)
    _define_input_errors(fv)


def _prepare_paths(fv: flags.FlagValues) -> dict[str, str]:
    """--input, --vocab and --output, each given by its own name or by google-research/bert's
    (--input_file, --vocab_file, --output_file); UsageError when missing or contradictory."""
    paths = {}
    for ours, google in _GOOGLE_PREPARE_FLAGS.items():
        value, alias = fv[ours].value, fv[google].value
        if value is None and alias is None:
            raise UsageError(f"give --{ours} (or google-research/bert's name, --{google})")
        if value is not None and alias is not None and value != alias:
            raise UsageError(
                f"--{ours}={value} and --{google}={alias} contradict each other: --{google} "
                f"is google-research/bert's name for --{ours}; give one of them"
            )
        paths[ours] = value if value is not None else alias
    outputs = paths["output"].split(",")
    if fv.output_file is not None and len(outputs) > 1:
        raise UsageError(
            f"--output_file={fv.output_file}: bertjax writes one dataset directory of "
            f"--num_shards shards, not a list of files; give one path, e.g. "
            f"--output_file={outputs[0]} --num_shards={len(outputs)}"
        )
    return paths


def _run_prepare(fv: flags.FlagValues) -> None:
    from bertjax import storage
    from bertjax.config import CONFIG_FILE
    from data_pipelines.pretraining_data import create_pretraining_data
    from data_pipelines.tokenizers import load_tokenizer

    paths = _prepare_paths(fv)
    if storage.isfile(storage.join(paths["vocab"], CONFIG_FILE)):
        # A checkpoint as --vocab: its ids must have rows in its embedding table.
        from bertjax import checkpoint as ckpt

        tokenizer = ckpt.load_checked_tokenizer(paths["vocab"], do_lower_case=fv.do_lower_case)
    else:  # without importing JAX (a Ctrl-C in its gc callback would be lost)
        tokenizer = load_tokenizer(paths["vocab"], do_lower_case=fv.do_lower_case)
    info = create_pretraining_data(
        paths["input"].split(","),
        tokenizer,
        paths["output"],
        max_seq_length=fv.max_seq_length,
        max_predictions_per_seq=fv.max_predictions_per_seq,
        masked_lm_prob=fv.masked_lm_prob,
        dupe_factor=fv.dupe_factor,
        short_seq_prob=fv.short_seq_prob,
        random_seed=fv.random_seed,
        do_whole_word_mask=fv.do_whole_word_mask,
        dynamic_masking=fv.dynamic_masking,
        num_output_shards=fv.num_shards,
        num_workers=fv.num_workers,
        output_format=fv.output_format,
        overwrite=fv.overwrite,
        input_errors=fv.input_errors,
    )
    print(f"wrote {info.num_examples} examples to {paths['output']}")


def _define_train(fv: flags.FlagValues, argv: list[str]) -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, e.g. experiments/pretrain/bert_base.py:phase1; "
        "override fields with --config.train.batch_size=64.",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Checkpoints, metrics and prepared data go here; a run "
        "started on a workdir with checkpoints resumes.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-host: host:port of process 0 (TPU pods and SLURM are detected without it).",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _run_train(fv: flags.FlagValues) -> None:
    from bertjax import sharding

    sharding.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    from bertjax import pretrain

    last = _run_loop("train", pretrain.train, fv.config, fv.workdir)
    if last:
        print("final: " + pretrain.format_metrics(dict(sorted(last.items()))))
    else:
        print(
            f"{fv.workdir} already holds the final step of this run (config.train.num_steps); "
            "nothing to do. Metrics are in its metrics.jsonl."
        )


COMMANDS: dict[
    str, tuple[Callable[[flags.FlagValues], None], Callable[[flags.FlagValues], None], str]
] = {
    "convert": (_define_convert, _run_convert, "import/export checkpoints"),
    "features": (_define_features, _run_features, "extract contextual features"),
    "corpus": (_define_corpus, _run_corpus, "write a corpus"),
    "vocab": (_define_vocab, _run_vocab, "train a vocab"),
    "prepare": (_define_prepare, _run_prepare, "create pre-training examples"),
    "train": (_define_train, _run_train, "pre-train BERT"),
    "finetune": (_define_finetune, _run_finetune, "fine-tune on one GLUE task"),
    "ner": (_define_ner, _run_ner, "named entities in raw text"),
    "glue": (_define_glue, _run_glue, "GLUE suite"),
    "smoke": (_define_smoke, _run_smoke, "one forward/backward step on a tiny model"),
}


def _flag_error(e: Exception, args: list[str]) -> str:
    """One line for a flag parsing error. ml_collections raises KeyError('name\\nDid you
    mean ...') for an unknown --config key, whose str() is a quoted repr; this gives the
    message itself and the whole dotted key that was given."""
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(message, str) and len(message) > 1 and message[0] == message[-1] == "'":
        try:  # a KeyError's text wrapped in another flag error: the quoted repr of a string
            message = ast.literal_eval(message)
        except (SyntaxError, ValueError):
            pass
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if "Error whilst parsing config file" in str(message) and len(lines) > 1:
        # the config file's get_config raised: its traceback is in the message; keep the
        # flag and the exception line
        return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    message = "; ".join(lines)
    bad = message.split(";")[0].strip().strip("'\"")
    for arg in args:
        key = arg.split("=", 1)[0]
        if key.startswith("--config.") and bad and bad in key.split(".")[1:]:
            return f"unknown config key {key[len('--config.') :]} ({message})"
    return message


# Commands whose --config is a pre-training (False) or a fine-tuning (True) config.
_CONFIG_KIND = {"train": False, "finetune": True}


def _config_kind_error(command: str, config: Any) -> str | None:
    """The line of `config.check_config_kind` when `config` belongs to the other command."""
    from bertjax.config import check_config_kind

    if command not in _CONFIG_KIND:
        return None
    try:
        check_config_kind(config, fine_tuning=_CONFIG_KIND[command])
    except ValueError as e:
        return str(e)
    return None


def _config_key_error(args: list[str], command: str = "") -> str | None:
    """One line for a config given to the other command (`_config_kind_error`), else for
    the first `--config.a.b` override that names no field of the config given by
    `--config`: "unknown config key a.b (did you mean a.c?)", or the keys of its group when
    none is close. None when every override names a field, or when the config does not
    load here (the flag error then speaks for itself)."""
    import difflib

    from ml_collections import config_flags

    value = next(
        (args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-config")), None
    )
    for a in args:
        if a.startswith(("--config=", "-config=")):
            value = a.partition("=")[2]
    if value is None:
        return None
    try:  # the config alone, without the overrides
        fv = flags.FlagValues()
        argv = ["bertjax", f"--config={value}"]
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
        fv(argv)
        config = fv.config
    except Exception:
        return None
    wrong_kind = _config_kind_error(command, config)
    if wrong_kind:
        return wrong_kind
    for arg in args:
        if not arg.startswith(("--config.", "-config.", "--noconfig.", "-noconfig.")):
            continue
        key = arg.split("=", 1)[0].split(".", 1)[1]
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            group = ".".join(parts[:i])
            if not hasattr(node, "keys"):
                return f"config key {key}: {group} is a value ({type(node).__name__}), not a group"
            if part in node:
                node = node[part]
                continue
            names = sorted(node.keys())
            close = difflib.get_close_matches(part, names, n=1)
            if close:
                fix = ".".join([*parts[:i], close[0], *parts[i + 1 :]])
                return f"unknown config key {key} (did you mean {fix}?)"
            return f"unknown config key {key} ({group or 'the config'} has: {', '.join(names)})"
    return None


# The commands that compile XLA programs, and the flag that keeps them across runs.
_COMPILING = ("train", "finetune", "glue", "features", "ner", "smoke")


def _define_compilation_cache(fv: flags.FlagValues) -> None:
    # $XDG_CACHE_HOME/bertjax/xla, ~/.cache/bertjax/xla without XDG_CACHE_HOME. (No import of
    # jax here: the logging set-up in `main` must come first.)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    flags.DEFINE_string(
        "compilation_cache_dir",
        os.path.join(cache, "bertjax", "xla"),
        "persistent XLA compilation cache: a run compiles each shape once and later runs "
        "with the same model and shapes load it ('' turns it off; JAX_COMPILATION_CACHE_DIR, "
        "when set, wins)",
        flag_values=fv,
    )


class UsageError(ValueError):
    """Wrong combination of flags."""


# The packages whose own exceptions and warnings speak to the user.
_OWN_PACKAGES = ("bertjax", "data_pipelines", "experiments")
_RAISE = dis.opmap["RAISE_VARARGS"]


def _is_own(module: str | None) -> bool:
    return module == __name__ or (module or "").split(".")[0] in _OWN_PACKAGES


def is_user_error(e: BaseException) -> bool:
    """Whether `e` reports a problem with the user's input (one line) rather than a bug.

    User errors are a missing or existing path (FileNotFoundError, FileExistsError), the
    ValueError subclasses bertjax defines (CorpusError, TokenizerFileError, CheckpointError,
    UsageError, ...), and a plain ValueError raised by a `raise` statement in bertjax's own
    code (its checks of argument values). Anything else keeps its traceback: a ValueError
    raised inside a third-party library or the standard library (bertjax converts the ones
    user input can cause where it calls the library, naming the file or value), or one raised
    by an operation in bertjax's code, such as a failed unpacking, is a bug.
    """
    if isinstance(e, (FileNotFoundError, FileExistsError)):
        return True
    if not isinstance(e, ValueError):
        return False
    if type(e) is not ValueError:
        return _is_own(type(e).__module__)
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    raised = frame.f_code.co_code[tb.tb_lasti] == _RAISE
    return raised and _is_own(frame.f_globals.get("__name__"))


# --- Experiment configs by name ------------------------------------------------------------------
#
# The experiment configs ship inside the package (`experiments/<group>/<name>.py`), so a
# pip-installed bertjax (a pod's workers, which have no clone) names them: `--config
# bert_base:phase1`, `--config glue/mrpc`, `--config squad/v1`. A path that exists is used as
# it is; a bare name is looked up among the groups (it must be unique).


def shipped_configs() -> list[str]:
    """The configs in the installed `experiments` package, as "group/name", sorted."""
    import experiments

    root = os.path.dirname(os.path.abspath(experiments.__file__))
    names = []
    for group in sorted(os.listdir(root)):
        directory = os.path.join(root, group)
        if not os.path.isfile(os.path.join(directory, "__init__.py")):
            continue
        names += [
            f"{group}/{f[:-3]}"
            for f in sorted(os.listdir(directory))
            if f.endswith(".py") and f not in ("__init__.py", "common.py")
        ]
    return names


def resolve_config(value: str) -> str:
    """The config file (with its ":arg") that `--config value` names: an existing path as it
    is, else a shipped config by name; UsageError listing the shipped names otherwise."""
    path, sep, arg = value.partition(":")
    if os.path.isfile(path):
        return value
    import experiments

    root = os.path.dirname(os.path.abspath(experiments.__file__))
    name = path.removesuffix(".py").removeprefix("experiments/")
    shipped = shipped_configs()
    matches = [n for n in shipped if n == name or n.split("/", 1)[1] == name]
    if len(matches) == 1:
        return os.path.join(root, matches[0] + ".py") + sep + arg
    why = "names several shipped configs" if matches else "is neither a file nor a shipped config"
    raise UsageError(f"--config={value}: {path!r} {why}; shipped: {', '.join(shipped)}")


def shipped_config(name: str, arg: str | None = None) -> Any:
    """The ConfigDict of a shipped experiment config by "group/name" (`get_config(arg)` of
    experiments/<group>/<name>.py); library code receives configs built here."""
    import importlib

    if name not in shipped_configs():
        raise UsageError(
            f"{name!r} is not a shipped config; shipped: {', '.join(shipped_configs())}"
        )
    return importlib.import_module("experiments." + name.replace("/", ".")).get_config(arg)


def glue_task_config(task: str) -> Any:
    """A GLUE task's experiment config (experiments/glue/<task>.py), what `bertjax glue`
    fine-tunes each task with."""
    return shipped_config(f"glue/{task}")


def resolve_config_argv(argv: list[str]) -> list[str]:
    """argv with the value of --config (`--config X` or `--config=X`) resolved by
    `resolve_config`."""
    out = list(argv)
    for i, a in enumerate(out):
        if a in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif a.startswith(("--config=", "-config=")):
            flag, _, value = a.partition("=")
            out[i] = f"{flag}={resolve_config(value)}"
    return out


@contextlib.contextmanager
def _own_warnings_as_lines(command: str) -> Iterator[None]:
    """Shows bertjax's own warnings (e.g. replaced input bytes) as one line each, above any
    progress bar (tqdm.write moves the bar down rather than writing into it)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if _is_own(category.__module__):
            from tqdm import tqdm

            tqdm.write(f"bertjax {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which saves a checkpoint instead): raised where the
    command stands, like Ctrl-C's KeyboardInterrupt, so the `finally:` and cleanup blocks
    run (a half-written output's temporary directory is removed); the CLI exits 143."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the block (a training loop's
    `trainer.Preemption` takes it over while it runs). A forked worker that inherited the
    handler ends as the signal's default would end it."""
    pid = os.getpid()

    def handler(signum, frame):
        del frame
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `bertjax` console script; exits with the command's status."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"bertjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    define, run, _ = COMMANDS[command]
    try:
        argv = resolve_config_argv(argv)
    except UsageError as e:
        print(f"bertjax {command}: {e}", file=sys.stderr)
        sys.exit(2)
    fv = flags.FlagValues()
    define(fv, argv)
    if command in _COMPILING:
        _define_compilation_cache(fv)
    if any(a in ("-h", "--help", "-help") for a in argv[2:]):
        print(f"usage: bertjax {command} [flags]\n\n{fv.get_help()}")
        sys.exit(0)
    try:
        extra = fv([f"bertjax {command}", *argv[2:]])[1:]
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections reports an unknown --config.x.y key as AttributeError/KeyError.
        message = _config_key_error(argv[2:], command) or _flag_error(e, argv[2:])
        # --help lists the flags, not the config's keys or what its file needs: no pointer
        # to it after an error in those.
        about_config = message.startswith(
            ("unknown config key", "config key", "flag --config", "config: ")
        )
        hint = "" if about_config else f"\n(see `bertjax {command} --help`)"
        print(f"bertjax {command}: {message}{hint}", file=sys.stderr)
        sys.exit(2)
    wrong_kind = _config_kind_error(command, fv["config"].value) if "config" in fv else None
    if wrong_kind:
        print(f"bertjax {command}: {wrong_kind}", file=sys.stderr)
        sys.exit(2)
    if extra:
        print(
            f"bertjax {command}: unexpected argument(s) {extra}; every input is a --flag\n"
            f"(see `bertjax {command} --help`)",
            file=sys.stderr,
        )
        sys.exit(2)
    # force: a library imported by a command's flag definitions may have set up the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)  # retries: the error is one line
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # backend probing
    try:
        if command in _COMPILING:
            from bertjax import trainer

            trainer.use_compilation_cache(fv.compilation_cache_dir)
        with _own_warnings_as_lines(command), _sigterm_raises():
            run(fv)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM outside a training loop
        terminated = isinstance(e, Terminated)
        print(
            f"bertjax {command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr
        )
        sys.exit(143 if terminated else 130)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        if not is_user_error(e):
            raise
        print(f"bertjax {command}: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
