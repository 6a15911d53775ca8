"""Throughput of pre-training data preparation: MB of input text per second.

Measures, on one corpus and one vocabulary:

* tokenization alone: `Tokenizer.encode_batch` over every sentence (this process; the
  Rust tokenizer uses its own threads), and through `tokenizers.WordPieceCache`
  (what the pipeline does for WordPiece vocabularies);
* full example creation: `create_pretraining_data` (read, tokenize, build pairs, mask,
  serialize, write ArrayRecord shards) in this process and with `--num_workers`
  processes, as wall-clock MB/s and MB per CPU-second (this process and its workers;
  the figure to compare on a machine that other jobs share), the fastest of `--runs`
  runs of each;
* optionally (`--reference PATH`), google-research/bert's `create_pretraining_data.py`
  on the same corpus, vocabulary and parameters. Fetch it yourself (with its
  `tokenization.py` beside it); it is not part of this repository. It is written for
  TensorFlow 1, so it is run with `tensorflow.compat.v1` standing in for `tensorflow`
  (and needs `six`); if it cannot run, the benchmark says why and goes on. Its time is
  measured inside its process, without the interpreter and TensorFlow start-up, and so
  is ours (without the interpreter start-up, with the worker start-up).

The default corpus is the embedded one (CPython's documentation, written on the fly);
`--repeat N` concatenates it N times for a longer, steadier run; `--size_mb X` repeats it
and cuts it at a document end at X MB (the README's figure: `--size_mb 4`). The default vocabulary
is a WordPiece vocabulary trained on the corpus. Figures are printed; with `--json`, a
final line holds them as JSON.

  python -m benchmarks.prepare_data --json
  python -m benchmarks.prepare_data --size_mb 4 --reference ~/bert/create_pretraining_data.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from data_pipelines import corpus, corpus_sources
from data_pipelines import pretraining_data as pdata
from data_pipelines.tokenizers import load_tokenizer, make_word_cache
from data_pipelines.vocab import train_vocab

# Runs the reference script with tensorflow.compat.v1 as `tensorflow`; prints its time.
_REFERENCE_SHIM = r"""
import os, runpy, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow.compat.v1 as tf
sys.modules["tensorflow"] = tf
script = sys.argv[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
sys.argv = [script] + sys.argv[2:]
start, cpu = time.perf_counter(), time.process_time()
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    if e.code not in (None, 0):
        raise
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(f"REFERENCE_SECONDS {wall:.6f} {cpu:.6f}", file=sys.stderr)
"""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--corpus", help="text file(s) in BERT's format (default: embedded corpus)")
    p.add_argument("--repeat", type=int, default=1, help="concatenate the corpus N times")
    p.add_argument(
        "--size_mb",
        type=float,
        help="instead of --repeat: the corpus repeated and cut at a document end to this size",
    )
    p.add_argument("--vocab", help="vocab.txt / tokenizer directory (default: train one)")
    p.add_argument("--vocab_size", type=int, default=30522, help="size of the trained vocab")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_predictions_per_seq", type=int, default=20)
    p.add_argument("--dupe_factor", type=int, default=10)
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--runs", type=int, default=3, help="runs of each example-creation set-up; best kept"
    )
    p.add_argument("--reference", help="path to google-research/bert's create_pretraining_data.py")
    p.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print a final JSON line")
    return p.parse_args(argv)


def _run_reference(script: str, corpus_path: str, vocab_file: str, out: str, args) -> dict:
    if not os.path.isfile(script):
        return {"error": f"{script}: no such file"}
    if not os.path.isfile(
        os.path.join(os.path.dirname(os.path.abspath(script)), "tokenization.py")
    ):
        return {"error": f"{script}: needs its tokenization.py in the same directory"}
    cmd = [
        sys.executable,
        "-c",
        _REFERENCE_SHIM,
        script,
        f"--input_file={corpus_path}",
        f"--output_file={out}",
        f"--vocab_file={vocab_file}",
        "--do_lower_case=True",
        f"--max_seq_length={args.max_seq_length}",
        f"--max_predictions_per_seq={args.max_predictions_per_seq}",
        "--masked_lm_prob=0.15",
        f"--dupe_factor={args.dupe_factor}",
        "--random_seed=12345",
    ]
    print("running the reference (this takes a while) ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    match = re.search(r"REFERENCE_SECONDS ([0-9.]+) ([0-9.]+)", proc.stderr)
    if proc.returncode != 0 or not match:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"error": f"the reference script could not run (exit {proc.returncode}): {tail}"}
    examples = None
    m = re.search(r"Wrote (\d+) total instances", proc.stderr)
    if m:
        examples = int(m.group(1))
    return {
        "seconds": float(match.group(1)),
        "cpu_seconds": float(match.group(2)),
        "wall_seconds": wall,
        "examples": examples,
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        if args.corpus:
            sources = corpus.expand_input_files(args.corpus)
            name = ",".join(sources)
        else:
            sources = [os.path.join(work, "embedded.txt")]
            corpus_sources.write_embedded_corpus(sources[0])
            name = "embedded (CPython documentation)"
        path = os.path.join(work, "bench_corpus.txt")
        texts = []
        for src in sources:
            with open(src, "rb") as f:
                data = f.read()
            texts.append((data if data.endswith(b"\n") else data + b"\n") + b"\n")
        base = b"".join(texts)
        if args.size_mb:
            # The sources over and over, cut at the last document end before the size.
            target = int(args.size_mb * 1e6)
            text = base * (target // max(1, len(base)) + 1)
            text = text[: text.rfind(b"\n\n", 0, target) + 2]
        else:
            text = base * args.repeat
        with open(path, "wb") as out:
            out.write(text)
        size = os.path.getsize(path)
        mb = size / 1e6

        if args.vocab:
            tok = load_tokenizer(args.vocab)
        else:
            tok = train_vocab(
                [path],
                kind="wordpiece",
                vocab_size=args.vocab_size,
                out_dir=os.path.join(work, "vocab"),
                overwrite=True,
            )
        vocab_file = getattr(tok, "vocab_file", None)
        print(f"corpus: {name}: {mb:.2f} MB")
        print(f"vocab: {tok.kind}, {tok.vocab_size} tokens")

        # Tokenization alone.
        documents = list(corpus.iter_documents(path))
        sentences = [s for d in documents for s in d]
        start = time.perf_counter()
        for i in range(0, len(sentences), 20_000):
            tok.encode_batch(sentences[i : i + 20_000])
        tok_seconds = time.perf_counter() - start
        print(f"tokenization (encode_batch, this process): {mb / tok_seconds:.2f} MB/s")
        cache = make_word_cache(tok)
        cache_seconds = None
        if cache is not None:
            start = time.perf_counter()
            for i in range(0, len(sentences), 20_000):
                cache.encode(sentences[i : i + 20_000])
            cache_seconds = time.perf_counter() - start
            print(
                f"tokenization (WordPieceCache, as the pipeline does): "
                f"{mb / cache_seconds:.2f} MB/s"
            )

        # Full example creation, in this process and with worker processes.
        result = {
            "corpus": name,
            "repeat": args.repeat,
            "size_mb": args.size_mb,
            "runs": args.runs,
            "num_workers": args.num_workers,
            "corpus_mb": round(mb, 3),
            "vocab_size": tok.vocab_size,
            "cpu_count": os.cpu_count(),
            "dupe_factor": args.dupe_factor,
            "max_seq_length": args.max_seq_length,
            "tokenize_mb_per_s": round(mb / tok_seconds, 3),
            "tokenize_cached_mb_per_s": round(mb / cache_seconds, 3) if cache_seconds else None,
        }
        runs = sorted({1, args.num_workers})
        for workers in runs:
            out_dir = os.path.join(work, f"examples_{workers}")
            seconds = cpu = float("inf")
            for _ in range(max(1, args.runs)):  # the fastest run (the CPU is shared)
                start, cpu0 = time.perf_counter(), _cpu_seconds()
                info = pdata.create_pretraining_data(
                    [path],
                    tok,
                    out_dir,
                    max_seq_length=args.max_seq_length,
                    max_predictions_per_seq=args.max_predictions_per_seq,
                    dupe_factor=args.dupe_factor,
                    num_workers=workers,
                    overwrite=True,
                    progress=False,
                )
                elapsed = time.perf_counter() - start
                if elapsed < seconds:
                    seconds, cpu = elapsed, _cpu_seconds() - cpu0
            print(
                f"example creation (create_pretraining_data, num_workers={workers}, "
                f"dupe_factor {args.dupe_factor}, seq {args.max_seq_length}): "
                f"{mb / seconds:.2f} MB/s ({mb / cpu:.2f} MB per CPU-second), "
                f"{info.num_examples} examples in {seconds:.1f} s"
            )
            result[f"create_mb_per_s_{workers}w"] = round(mb / seconds, 3)
            result[f"create_mb_per_cpu_s_{workers}w"] = round(mb / cpu, 3)
            result[f"create_seconds_{workers}w"] = round(seconds, 3)
            result["num_examples"] = info.num_examples
        best = min(result[f"create_seconds_{w}w"] for w in runs)

        if args.reference:
            if vocab_file is None:
                ref = {"error": "the reference needs a WordPiece vocab.txt"}
            else:
                ref = _run_reference(
                    args.reference, path, vocab_file, os.path.join(work, "ref.tfrecord"), args
                )
            if "error" in ref:
                print(f"reference: {ref['error']}")
                result["reference_error"] = ref["error"]
            else:
                ref_rate = mb / ref["seconds"]
                print(
                    f"reference (google-research/bert create_pretraining_data.py): "
                    f"{ref_rate:.3f} MB/s ({mb / ref['cpu_seconds']:.3f} MB per CPU-second), "
                    f"{ref['examples']} examples in {ref['seconds']:.1f} s"
                )
                one = result["create_seconds_1w"]
                print(
                    f"speedup (best wall time): {ref['seconds'] / best:.1f}x; "
                    f"in one process: {ref['seconds'] / one:.1f}x"
                )
                result.update(
                    reference_mb_per_s=round(ref_rate, 4),
                    reference_mb_per_cpu_s=round(mb / ref["cpu_seconds"], 4),
                    reference_seconds=round(ref["seconds"], 3),
                    reference_examples=ref["examples"],
                    speedup=round(ref["seconds"] / best, 2),
                    speedup_1w=round(ref["seconds"] / one, 2),
                )
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
