"""The machinery under `create_pretraining_data`: the worker pool and the shard writers.

`TaskPool` runs the example-creation tasks of `data_pipelines.pretraining_data` on
spawned worker processes (or lazily in the calling process); `ShardWriter` deals the
finished records round-robin over the shard files of a dataset directory, in the
ArrayRecord format of `data_pipelines.records` or as google-research/bert's TFRecord
features. Nothing here decides what an example is, so the output does not depend on the
number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bertjax import storage
from data_pipelines import features as F
from data_pipelines.records import (
    ARRAYRECORD_WRITER_OPTIONS,
    OutputFormat,
    decode_record,
    shard_file_name,
)

TFRECORD_NEEDS = "writing TFRecord files (output_format tfrecord)"


# ---------------------------------------------------------------------------------------
# The worker pool.


class _SpawnWithoutMainProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not re-run the parent's `__main__` script.

    Spawned children normally re-execute the main script (as `__mp_main__`); a script
    that calls `create_pretraining_data` without an `if __name__ == "__main__":` guard
    then recurses and the pool breaks or hangs. The workers need nothing from
    `__main__` (tasks live in library modules, tokenizers pickle by value), so the main
    module is hidden while a child's preparation data is collected.
    """

    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # noqa: N802 (multiprocessing's name)
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            return multiprocessing.context.SpawnProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _SpawnWithoutMain(multiprocessing.context.SpawnContext):
    Process = _SpawnWithoutMainProcess


_WORKER: dict[str, Any] = {}
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_init(make_context: Callable[..., Any], context_file: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core instead
    # Ctrl-C and SIGTERM reach the whole process group. The parent stops the pool (tasks
    # not started are cancelled, running ones finish); a worker killed by the signal
    # halfway through sending a result would leave the parent waiting for the rest of
    # it forever. So workers ignore both; they were blocked since the worker was spawned
    # (TaskPool.submit), and what arrived during start-up is discarded once ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # The parent's own pickle of `context_args` (see TaskPool), not user data.
    with open(context_file, "rb") as f:
        context_args = pickle.load(f)
    _WORKER["context"] = make_context(*context_args)


def _worker_task(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(_WORKER["context"], *args)


class _Lazy:
    """A serial stand-in for a Future: runs the task when its result is needed."""

    def __init__(self, fn: Any, *args: Any):
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


class TaskPool:
    """Runs tasks ``fn(context, *args)`` on `num_workers` spawned processes.

    Each process builds its ``context = make_context(*context_args)`` once (e.g. the
    tokenizer and its word cache). `fn` and `make_context` are module-level functions
    (sent by name); `context_args` and the task arguments are pickled. `submit` returns an
    object with ``result()``; the caller takes results in submission order. Workers are
    spawned (safe from a process that already imported JAX or TensorFlow) without
    re-running the caller's ``__main__``. With ``num_workers <= 1`` everything runs in the
    calling process, each task when its result is asked for. A worker that dies raises
    `concurrent.futures.process.BrokenProcessPool` from ``result()``.

    `context_args` reach the workers through a temporary file (removed by `close`), not
    with the spawn data: a spawn payload larger than a pipe's buffer (64 KiB; a tokenizer
    and its masking tables are ~300 KB) blocks the parent until the child has started
    Python and imported its modules, one worker after the other (~0.25 s each).
    """

    def __init__(
        self, num_workers: int, make_context: Callable[..., Any], context_args: tuple = ()
    ):
        self._pool = None
        self._context = None
        self._context_file = None
        if num_workers > 1:
            fd, self._context_file = tempfile.mkstemp(prefix="bertjax-workers-", suffix=".pkl")
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(context_args, f, protocol=pickle.HIGHEST_PROTOCOL)
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    num_workers,
                    mp_context=_SpawnWithoutMain(),
                    initializer=_worker_init,
                    initargs=(make_context, self._context_file),
                )
            except BaseException:
                self._remove_context_file()
                raise
        else:
            self._context = make_context(*context_args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            return _Lazy(fn, self._context, *args)
        # `submit` may spawn a worker: it inherits SIGINT and SIGTERM blocked, so a Ctrl-C
        # while it starts Python cannot kill it (see _worker_init). Here they are only
        # delayed until the submission returns.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return self._pool.submit(_worker_task, fn, args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def close(self) -> None:
        """Stops the workers: tasks not started are cancelled, running ones finish (the
        workers ignore SIGINT and SIGTERM, which the caller handles). Until they have,
        this process ignores SIGINT and SIGTERM too (a task takes seconds at most): a
        second Ctrl-C would interrupt the shutdown halfway and leave the pool's threads
        waiting forever at exit. The context file is removed in any case."""
        shield = self._pool is not None and threading.current_thread() is threading.main_thread()
        previous = {}
        try:
            if shield:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    previous[signum] = signal.signal(signum, signal.SIG_IGN)
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: a handler installed outside Python, kept
                    signal.signal(signum, handler)
            self._remove_context_file()

    def _remove_context_file(self) -> None:
        if self._context_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._context_file)
            self._context_file = None


# ---------------------------------------------------------------------------------------
# Shard files.


class _ArrayRecordShard:
    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writer = ArrayRecordWriter(path, ARRAYRECORD_WRITER_OPTIONS)
        self.write = self._writer.write  # write(record: bytes), called once per record

    def close(self) -> None:
        self._writer.close()


class _TFRecordShard:
    """Records re-encoded as `tf.train.Example`s of google-research/bert's features."""

    def __init__(
        self, path: str, *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int
    ):
        tf = storage.require_extra("tensorflow", TFRECORD_NEEDS)
        self._tf = tf
        self._writer = tf.io.TFRecordWriter(path)
        self._shape = dict(
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            pad_id=pad_id,
        )

    def write(self, record: bytes) -> None:
        tf = self._tf
        ex = decode_record(record, **self._shape)

        def ints(v: np.ndarray) -> Any:
            return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(v).tolist()))

        feats = {k: ints(ex[k]) for k in F.PRETRAINING_FEATURES if k != F.MASKED_LM_WEIGHTS}
        feats[F.MASKED_LM_WEIGHTS] = tf.train.Feature(
            float_list=tf.train.FloatList(value=ex[F.MASKED_LM_WEIGHTS].tolist())
        )
        example = tf.train.Example(features=tf.train.Features(feature=feats))
        # Sorted feature keys: the default order of a protobuf map follows a per-process
        # hash seed, so the bytes would differ from run to run.
        self._writer.write(example.SerializeToString(deterministic=True))

    def close(self) -> None:
        self._writer.close()


class ShardWriter:
    """`num_shards` shard files in `directory`, the records dealt round-robin over them.

    `names` are the files (`data_pipelines.records.shard_file_name`), `counts` the records
    written to each. TFRecord shards re-encode each record as a `tf.train.Example` (so they
    need the example shape: `max_seq_length`, `max_predictions_per_seq`, `pad_id`).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        num_shards: int,
        output_format: OutputFormat,
        *,
        max_seq_length: int,
        max_predictions_per_seq: int,
        pad_id: int,
    ):
        self.names = [shard_file_name(i, num_shards, output_format) for i in range(num_shards)]
        paths = [os.path.join(os.fspath(directory), n) for n in self.names]
        if output_format == "arrayrecord":
            self._shards: list[Any] = [_ArrayRecordShard(p) for p in paths]
        else:
            shape = dict(
                max_seq_length=max_seq_length,
                max_predictions_per_seq=max_predictions_per_seq,
                pad_id=pad_id,
            )
            self._shards = [_TFRecordShard(p, **shape) for p in paths]
        self.counts = [0] * num_shards
        self._next = 0

    def write(self, records: Sequence[bytes]) -> None:
        """Deals `records` on from where the last call stopped: record i of this call goes
        to shard ``(next + i) % num_shards``."""
        n = len(self._shards)
        for k, shard in enumerate(self._shards):
            mine = records[(k - self._next) % n :: n]
            # A C-level loop over this shard's records (a deque of length 0 keeps nothing).
            collections.deque(map(shard.write, mine), maxlen=0)
            self.counts[k] += len(mine)
        self._next = (self._next + len(records)) % n

    @property
    def num_examples(self) -> int:
        return sum(self.counts)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()
