"""Can the pre-training input pipeline feed an accelerator? Sequences per second per core.

    python -m benchmarks.input_pipeline [--data DIR ...] [--workers 1 2] [--json]
    python -m benchmarks.input_pipeline --smoke --json     # a tiny run, seconds

The target: at 50% MFU one H200 trains bert-base at seq 128 at about 7,000 sequences/s,
and its host has 16 cores, so the pipeline must deliver at least 450 sequences/s per
host core at seq 128 (7,000 / 16 = 438, rounded up) and 450 * 128 / T at length T (~112
at 512). A sequence is a row of the batch, what the model computes on; a packed row
holds up to 3 pairs and costs the model the same as an unpacked one.

What it runs. Pre-training data is prepared with the project's own code (the embedded
corpus, a 30,522-token WordPiece vocab trained on it, `create_pretraining_data` at
seq 128 and 512, static and dynamic masking), or taken from ``--data`` (directories
written by ``bertjax prepare``). Each mode (length x static/dynamic masking x packing
on/off) is read through `make_pretrain_iterator`, the iterator pre-training uses, with
0 (in this process) and ``--workers`` grain worker processes:

* **per core**: rows per CPU-second of every process doing the work (this one and its
  worker processes, user + system time, from psutil; without psutil the workers' time
  comes from ``getrusage(RUSAGE_CHILDREN)`` after they exit, start-up included). The
  window starts and ends with the workers' buffers full (their CPU time has stopped
  rising), so it counts the work of exactly the batches taken. On a machine shared with
  other jobs this is the figure to trust; wall-clock rates depend on who else runs.
* **wall clock**: rows/s taken by a loop that does nothing else, and that rate divided
  by the number of workers (per worker process); the first batches, already waiting in
  the buffers, are left out. The ratio of the 2-worker and 1-worker rates is the
  scaling (at most 2, less on 2 shared cores where this process needs CPU too).
* **data wait**: the share of a training step's host time spent in ``next()`` of the
  iterator that pre-training uses (`prefetch_to_device` over `make_pretrain_iterator`,
  the batch put on the default device with ``jax.device_put``), when each step is
  simulated by sleeping for the time the accelerator would take: B / R seconds for a
  batch of B rows, R = 7,000 * (128 / T) * (cores of this machine / 16) rows/s, the
  share of an H200 that this many cores feed. Sleeping leaves the cores to the
  workers, as a host waiting on its accelerator does.

``--profile`` adds a cProfile summary of the in-process pipeline per mode (where the
time goes). Prints a table and the target's pass/fail; with ``--json`` the last line
is one JSON object: ``sequences_per_sec_per_core`` (seq 128, the lowest over masking,
packing and worker counts), the same at 512, ``pass`` and every figure per mode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import tempfile
import time

from data_pipelines import corpus, corpus_sources, records
from data_pipelines import pretrain_input as pinput
from data_pipelines import pretraining_data as pdata
from data_pipelines.features import INPUT_IDS, NEXT_SENTENCE_LABELS
from data_pipelines.tokenizers import load_tokenizer
from data_pipelines.vocab import train_vocab

H200_SEQUENCES_PER_SEC = 7000  # bert-base, seq 128, 50% MFU
HOST_CORES = 16  # cores of the host that feeds one H200
TARGET_PER_CORE_128 = 450  # 7,000 / 16 = 438 sequences/s per core, rounded up


def target_per_core(seq_len: int) -> float:
    return TARGET_PER_CORE_128 * 128 / seq_len


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", help="prepared dataset directories (default: prepare)")
    p.add_argument("--corpus", help="text file(s) in BERT's format (default: embedded corpus)")
    p.add_argument("--vocab", help="vocab.txt / tokenizer directory (default: train one)")
    p.add_argument("--seq_lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--dupe_factor", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=256, help="rows per batch")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    p.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per run and per data-wait run"
    )
    p.add_argument("--profile", action="store_true", help="cProfile the in-process pipeline")
    p.add_argument("--smoke", action="store_true", help="tiny corpus and runs (seconds)")
    p.add_argument("--workdir", help="keep the prepared data here (default: a temporary dir)")
    p.add_argument("--json", action="store_true", help="print a final JSON line")
    args = p.parse_args(argv)
    if args.smoke:  # every code path once, on a tiny synthetic corpus
        args.batch_size, args.workers, args.seconds = 16, [1], 0.2
    return args


# --- Data -----------------------------------------------------------------------------------


def _smoke_corpus(path: str) -> None:
    """A small synthetic corpus: 200 documents of 4-16 sentences of made-up words."""
    rnd = random.Random(0)
    syllables = "ka lo mi ren tu sa vi del om pra ne ju".split()
    words = ["".join(rnd.choices(syllables, k=rnd.randint(1, 3))) for _ in range(300)]
    docs = [
        [
            " ".join(rnd.choices(words, k=rnd.randint(4, 20))) + " ."
            for _ in range(rnd.randint(4, 16))
        ]
        for _ in range(200)
    ]
    corpus.write_documents(docs, path)


def prepare(args: argparse.Namespace, work: str) -> list[str]:
    """Dataset directories: one per sequence length and masking mode."""
    if args.data:
        return list(args.data)
    if args.corpus:
        source = args.corpus
    else:
        source = os.path.join(work, "corpus.txt")
        if args.smoke:
            _smoke_corpus(source)
        elif not os.path.isfile(source):
            corpus_sources.write_embedded_corpus(source, progress=False)
    if args.vocab:
        tok = load_tokenizer(args.vocab)
    else:
        tok = train_vocab(
            [source],
            kind="wordpiece",
            vocab_size=1000 if args.smoke else 30522,
            out_dir=os.path.join(work, "vocab"),
            overwrite=True,
            progress=False,
        )
    dirs = []
    for t in args.seq_lens:
        for dynamic in (False, True):
            out = os.path.join(work, f"seq{t}_{'dynamic' if dynamic else 'static'}")
            if not os.path.isfile(os.path.join(out, records.DATASET_INFO)):
                pdata.create_pretraining_data(
                    [source],
                    tok,
                    out,
                    max_seq_length=t,
                    max_predictions_per_seq={128: 20, 512: 80}.get(t, round(t * 0.15)),
                    dupe_factor=args.dupe_factor,
                    dynamic_masking=dynamic,
                    num_workers=1,
                    overwrite=True,
                    progress=False,
                )
            dirs.append(out)
    return dirs


# --- CPU time -------------------------------------------------------------------------------


def _cpu() -> tuple[float, float]:
    """(CPU seconds of this process, of its live child processes), user + system."""
    try:
        import psutil
    except ImportError:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # exited children only
        return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    kids = 0.0
    for child in me.children(recursive=True):
        try:
            kids += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return own, kids


def _settle(timeout: float = 10.0) -> None:
    """Waits until the worker processes stop working (their buffers are full)."""
    last = _cpu()[1]
    end = time.perf_counter() + timeout
    quiet = 0
    while time.perf_counter() < end and quiet < 2:
        time.sleep(0.1)
        now = _cpu()[1]
        quiet = quiet + 1 if now - last < 0.004 else 0
        last = now


# --- Measurements ---------------------------------------------------------------------------


def _iterator(data_dir: str, packing: bool, workers: int, batch_size: int):
    return pinput.make_pretrain_iterator(
        data_dir,
        global_batch_size=batch_size,
        seed=0,
        process_index=0,
        process_count=1,
        worker_count=workers,
        packing=packing,
    )


def _pairs(batch: dict) -> int:
    labels = batch[NEXT_SENTENCE_LABELS]
    return int((labels >= 0).sum()) if labels.ndim == 2 else len(labels)


def run(data_dir: str, packing: bool, workers: int, seq_len: int, args, *, wait: bool) -> dict:
    """One configuration: throughput, then (with `wait`) the data wait, on one iterator."""
    it = _iterator(data_dir, packing, workers, args.batch_size)
    try:
        result = measure(it, workers, args)
        if wait:
            result["data_wait"] = data_wait(it, seq_len, args)
    finally:
        it.close()
    return result


def measure(it, workers: int, args: argparse.Namespace) -> dict:
    """Rows per CPU-second (all processes) and per wall-second of one configuration."""
    skip = 3 * workers + 1  # batches already in the buffers when timing starts
    for _ in range(max(1, skip)):
        next(it)  # start-up: spawn, imports, first batches
    if workers:
        _settle()
    own0, kids0 = _cpu()
    rows = pairs = batches = 0
    times = []
    start = time.perf_counter()
    while batches < 2 * skip + 2 or time.perf_counter() - start < args.seconds:
        batch = next(it)
        rows += len(batch[INPUT_IDS])
        pairs += _pairs(batch)
        batches += 1
        times.append(time.perf_counter())
    if workers:
        _settle()
    own1, kids1 = _cpu()
    if workers and kids1 == kids0:  # no psutil: the workers' whole life, once they exited
        it.close()
        kids1 = _cpu()[1]
    own, kids = own1 - own0, kids1 - kids0
    per_batch = rows / batches
    timed = skip if workers else 0  # wall clock: from batch `skip` on (buffers drained)
    wall = times[-1] - (times[timed - 1] if timed else start)
    wall_rows = per_batch * (batches - timed)
    return {
        "workers": workers,
        "rows": rows,
        "pairs_per_row": pairs / rows,
        "cpu_seconds": own + kids,
        "main_process_cpu_share": own / max(own + kids, 1e-9),
        "rows_per_cpu_second": rows / max(own + kids, 1e-9),
        "rows_per_worker_cpu_second": rows / kids if workers and kids > 0 else None,
        "rows_per_second": wall_rows / wall,
        "rows_per_second_per_worker": wall_rows / wall / workers if workers else None,
    }


def data_wait(it, seq_len: int, args: argparse.Namespace) -> dict:
    """Share of the host's step time spent waiting in next(), against simulated steps."""
    import jax

    cores = os.cpu_count() or 1
    rate = H200_SEQUENCES_PER_SEC * 128 / seq_len * min(cores, HOST_CORES) / HOST_CORES
    step = args.batch_size / rate
    steps = max(3, round(args.seconds / step))
    it = pinput.prefetch_to_device(it, jax.device_put)  # as pre-training reads it
    jax.block_until_ready(next(it))
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t
        time.sleep(step)  # the accelerator computes on `batch`
    total = time.perf_counter() - start
    jax.block_until_ready(batch)
    return {
        "simulated_step_seconds": step,
        "steps": steps,
        "wait_share": waited / total,
        "wait_ms_per_step": waited / steps * 1e3,
    }


def profile(data_dir: str, packing: bool, args: argparse.Namespace) -> str:
    """cProfile of the in-process pipeline: the top functions by own time."""
    it = _iterator(data_dir, packing, 0, args.batch_size)
    next(it)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5 if args.smoke else 20):
        next(it)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return "\n".join(lines[start:]).rstrip()


# --- Main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        dirs = prepare(args, work)
        modes: dict[str, dict] = {}
        for data_dir in dirs:
            info = records.load_dataset_info(data_dir)
            t, dynamic = int(info.max_seq_length), bool(info.dynamic_masking)
            for packing in (False, True):
                name = (
                    f"seq{t}/{'dynamic' if dynamic else 'static'}/"
                    f"{'packed' if packing else 'unpacked'}"
                )
                # --smoke: worker processes in the first mode only (each start takes seconds).
                counts = [0, *([] if args.smoke and modes else args.workers)]
                waited = {0, max(counts)}
                runs = [run(data_dir, packing, w, t, args, wait=w in waited) for w in counts]
                per_core = min(r["rows_per_cpu_second"] for r in runs)
                mode = {
                    "seq_len": t,
                    "dynamic_masking": dynamic,
                    "packing": packing,
                    "examples": int(info.num_examples),
                    "target_per_core": target_per_core(t),
                    "sequences_per_sec_per_core": per_core,
                    "pass": per_core >= target_per_core(t),
                    "runs": runs,
                }
                by_workers = {r["workers"]: r["rows_per_second"] for r in runs}
                if 1 in by_workers and 2 in by_workers:
                    mode["scaling_1_to_2_workers"] = by_workers[2] / by_workers[1]
                if args.profile:
                    mode["profile"] = profile(data_dir, packing, args)
                modes[name] = mode
                _print_mode(name, mode)

    def lowest(t: int) -> float | None:
        figures = [m["sequences_per_sec_per_core"] for m in modes.values() if m["seq_len"] == t]
        return min(figures) if figures else None

    result = {
        "sequences_per_sec_per_core": lowest(128),
        "sequences_per_sec_per_core_512": lowest(512),
        "target_per_core": TARGET_PER_CORE_128,
        "target_per_core_512": target_per_core(512),
        "pass": all(m["pass"] for m in modes.values()),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "smoke": args.smoke,
        "modes": modes,
    }
    print(
        f"\ntarget: {TARGET_PER_CORE_128} sequences/s per core at seq 128 "
        f"({target_per_core(512):.1f} at 512), every mode: "
        + ("PASS" if result["pass"] else "FAIL")
        + f"; lowest at seq 128: {_fmt(result['sequences_per_sec_per_core'])}/s per core"
        + (f", at 512: {_fmt(lowest(512))}" if lowest(512) else "")
    )
    if args.json:
        print(json.dumps(result))
    return result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _print_mode(name: str, mode: dict) -> None:
    verdict = "pass" if mode["pass"] else "FAIL"
    print(
        f"{name}: {_fmt(mode['sequences_per_sec_per_core'])} rows per CPU-second at worst "
        f"(target {mode['target_per_core']:.0f}: {verdict})"
    )
    for r in mode["runs"]:
        where = f"{r['workers']} worker(s)" if r["workers"] else "in process"
        per_worker = f", {_fmt(r['rows_per_second_per_worker'])} per worker" if r["workers"] else ""
        print(
            f"  {where:>12}: {_fmt(r['rows_per_cpu_second'])} rows/CPU-s "
            f"(main process {r['main_process_cpu_share']:.0%}); wall "
            f"{_fmt(r['rows_per_second'])} rows/s{per_worker}; {r['pairs_per_row']:.2f} pairs/row"
        )
    if "scaling_1_to_2_workers" in mode:
        print(f"  scaling 1 -> 2 workers (wall clock): {mode['scaling_1_to_2_workers']:.2f}x")
    for r in mode["runs"]:
        if "data_wait" not in r:
            continue
        w = r["data_wait"]
        where = f"{r['workers']} worker(s)" if r["workers"] else "in process"
        print(
            f"  data wait, {where}: {w['wait_share']:.1%} of the step "
            f"({w['wait_ms_per_step']:.1f} ms of a simulated "
            f"{w['simulated_step_seconds'] * 1e3:.0f} ms step)"
        )
    if "profile" in mode:
        print("  profile (in process, by own time):")
        print("    " + mode["profile"].replace("\n", "\n    "))


if __name__ == "__main__":
    main()
