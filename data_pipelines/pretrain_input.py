"""Grain input pipeline over pre-training shards written by `pretraining_data`.

`make_pretrain_iterator(data_dir, global_batch_size=..., seed=...)` returns a grain
`DatasetIterator` of dicts of numpy arrays with the 7 pre-training features:
``input_ids, input_mask, segment_ids`` [B, T] int32, ``masked_lm_positions,
masked_lm_ids`` [B, P] int32, ``masked_lm_weights`` [B, P] float32 and
``next_sentence_labels`` [B] int32, where B = global_batch_size // process_count.

Design
------
* **Source.** All ArrayRecord shards listed in ``dataset_info.json`` form one
  random-access source (shards with no examples are skipped). A directory without
  ``dataset_info.json`` is refused: `create_pretraining_data` writes it last, so such a
  directory is incomplete. Records are read with ``ArrayRecordReader.read(i, i + 1)``
  (about 4 µs) rather than grain's `ArrayRecordDataSource`, whose per-index
  ``read([i])`` costs about 150 µs per record on these small records.
* **One global order.** The N examples (packs, with packing) are read as one stream,
  epoch after epoch: position ``x`` of the stream is example ``perm_e[x mod N]`` of epoch
  ``e = x // N``, where ``perm_e`` is a permutation of all N examples seeded by
  (`seed`, e) (grain's `index_shuffle`; the identity without `shuffle`). Global batch
  ``s`` is stream positions ``[s*G, (s+1)*G)`` in that order (G = global_batch_size), so
  a global batch may hold the end of one epoch and the start of the next (`GlobalOrder`).
* **Processes.** Process p of P reads rows ``[p*G/P, (p+1)*G/P)`` of every global batch
  (`process_rows`): a contiguous block, ordered by `process_index`. Concatenated in
  process order, the processes' batches are exactly the single-process batch, row for
  row, so a model whose randomness depends on the global row (dropout) trains
  identically on any number of hosts. `jax.make_array_from_process_local_data` puts a
  process's rows where its devices sit in the batch sharding; `bertjax.pretrain` asks
  that sharding which block a process holds and passes it here as
  (`process_index`, `process_count`). Defaults come from JAX.
* **What is dropped.** With ``num_epochs=None`` (training) nothing: the stream is
  endless. With `num_epochs` set it ends after ``num_epochs * N`` examples; the last
  ``num_epochs * N mod G`` of them (less than one global batch, the tail of the last
  epoch's permutation) are dropped with `drop_remainder`, or else form a smaller last
  batch, of which each process gets its block's part (possibly nothing); that is for
  reading a whole dataset in one process, since uneven blocks make no global array.
* **Dynamic masking.** When the dataset was written with ``dynamic_masking=True``, each
  example is masked on the fly by `masking.mask_example` with the generator
  `masking.example_rng(seed, epoch, example_index)`: the masks differ between
  epochs, are identical for a given (seed, epoch, example), and do not depend on the
  process count, shuffling or worker count. The masking parameters (probability,
  budget, whole-word masking, vocabulary tables) come from ``dataset_info.json``.
* **Per batch.** Each local batch is made in one go (`_ReadBatch`): its records are read
  one by one, then decoded together with numpy (`decode_batch`), masked together
  (`masking.mask_rows`: only the few draws from each example's generator are
  made per example, so the masks are bit for bit those of `mask_example`) and, with
  packing, laid out together (`packing.pack_batch`). This is 2-4x less CPU time per
  sequence than decoding, masking and packing each example alone, with the same bytes
  out (`benchmarks/input_pipeline.py`).
* **Workers.** ``worker_count=0`` decodes (and masks) in the calling process;
  ``worker_count=N`` prepares whole batches in N grain worker processes (``mp_prefetch``:
  worker i makes batches i, i + N, ... and they are returned in order), so the batches do
  not depend on `worker_count` either. Arrays under `MIN_SHARED_MEMORY_BYTES` come back
  through the pipe rather than in a shared-memory block each, which costs more below it.
* **Device prefetch.** `prefetch_to_device` wraps the iterator so that the next batches
  are put on the devices (``jax.make_array_from_process_local_data`` in
  `bertjax.pretrain`) while the current step runs; its state is the position after the
  batches taken, so a checkpoint taken between steps resumes exactly.
* **Checkpointing.** The returned iterator is a grain `DatasetIterator` over the local
  batches: ``state = it.get_state()`` (a dict holding the next batch index) and
  ``it.set_state(state)`` on an iterator built with the same arguments resume exactly
  where it was (the next batches are identical). With Orbax, save it next to the train
  state with ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` (handler
  ``grain.checkpoint.CheckpointHandler``), e.g.
  ``ocp.args.Composite(state=..., data=iterator_save_args(it))``; see
  `iterator_save_args` / `iterator_restore_args`. `save_iterator_state` /
  `restore_iterator_state` do the same with a plain JSON file.
* **TFRecord datasets** (``output_format="tfrecord"``) are for interoperability with
  other BERT code bases; this reader does not read them (ArrayRecord is the training
  format) and says so.
"""

from __future__ import annotations

import bisect
import collections
import copy
import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from bertjax import storage
from data_pipelines import features as F
from data_pipelines import packing as packing_lib
from data_pipelines.masking import example_rng, mask_rows
from data_pipelines.packing import DEFAULT_MAX_SEQUENCES_PER_PACK
from data_pipelines.records import (
    DATASET_INFO,
    FLAG_WIDE,
    HEADER,
    MAGIC,
    RECORD_ENCODING,
    VERSION,
    DatasetInfo,
    decode_records,
    load_dataset_info,
)

Batch = dict[str, np.ndarray]

# Worker processes hand arrays of at least this size over in shared memory, smaller ones
# through the pipe: a shared-memory block per array costs more than copying below it.
MIN_SHARED_MEMORY_BYTES = 256 * 1024


class PretrainRecordSource:
    """Random access over the records of several ArrayRecord shards (picklable)."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int]):
        keep = [(p, int(c)) for p, c in zip(paths, counts, strict=True) if c > 0]
        self._paths = [p for p, _ in keep]
        self._counts = [c for _, c in keep]
        self._starts = np.cumsum([0, *self._counts]).tolist()
        self._readers: list[Any] = [None] * len(self._paths)
        self._locks = [threading.Lock() for _ in self._paths]

    @classmethod
    def from_dataset(cls, data_dir: str | os.PathLike, info: DatasetInfo) -> PretrainRecordSource:
        """The records of a dataset directory, given its `dataset_info.json` contents."""
        return cls(
            [os.path.join(str(data_dir), s.file) for s in info.shards],
            [s.num_examples for s in info.shards],
        )

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, record_key: int) -> bytes:
        key = int(record_key)
        if not 0 <= key < len(self):
            raise IndexError(f"record {key} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self._starts, key) - 1
        position = key - self._starts[shard]
        with self._locks[shard]:
            reader = self._readers[shard]
            if reader is None:
                from array_record.python.array_record_module import ArrayRecordReader

                reader = ArrayRecordReader(
                    self._paths[shard], "readahead_buffer_size:0,max_parallelism:1"
                )
                self._readers[shard] = reader
            return reader.read(position, position + 1)[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self._paths, "counts": self._counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["counts"])

    def __repr__(self) -> str:
        return f"PretrainRecordSource({len(self._paths)} shards, {len(self)} records)"


class PackedRecordSource:
    """Random access over packs: pack i is the records ``plan[i]`` (see `packing`)."""

    def __init__(self, records: PretrainRecordSource, plan: np.ndarray):
        self._records = records
        self._plan = plan

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, record_key: int) -> tuple[bytes, ...]:
        members = self._plan[int(record_key)]
        return tuple(self._records[int(i)] for i in members if i >= 0)

    def __repr__(self) -> str:
        return f"PackedRecordSource({len(self)} packs of {self._records!r})"


@functools.lru_cache(maxsize=64)
def _epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit `index_shuffle` seed of one epoch's permutation."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


class GlobalOrder:
    """Which example sits at each position of the global stream (module docstring).

    ``order(x)`` is ``(epoch, example)`` with ``epoch = x // num_examples`` and
    ``example = perm_epoch[x % num_examples]``; ``perm_epoch`` is grain's `index_shuffle`
    seeded by (seed, epoch), the identity when ``shuffle`` is False. It depends on nothing
    but these three arguments: not on processes, devices or workers.
    """

    def __init__(self, num_examples: int, *, seed: int, shuffle: bool):
        if num_examples < 1:
            raise ValueError("no examples to read")
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, index = divmod(int(position), self.num_examples)
        if self.shuffle and self.num_examples > 1:
            index = grain.experimental.index_shuffle(
                index,
                max_index=self.num_examples - 1,
                seed=_epoch_seed(self.seed, epoch),
                rounds=4,
            )
        return epoch, int(index)


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) rows of every global batch that a process reads."""
    rows = global_batch_size // process_count
    return process_index * rows, (process_index + 1) * rows


class _ReadBatch:
    """Local batch b -> its rows, decoded (masked, packed) together.

    Local row k is row ``start + k % B`` of global batch ``k // B`` (B rows per process
    starting at row `start` of each global batch), i.e. stream position
    ``(k // B) * G + start + k % B``; local batch b is local rows ``[b * B, (b + 1) * B)``
    (fewer for a last partial batch: `num_rows` local rows in all).
    """

    def __init__(
        self,
        source: Any,
        order: GlobalOrder,
        *,
        global_batch_size: int,
        rows: tuple[int, int],
        num_rows: int,
        make: Callable[[list[Any], list[np.random.Generator] | None], Batch],
        seed: int,
        dynamic: bool,
    ):
        self.source = source
        self.order = order
        self.global_batch_size = global_batch_size
        self.start, stop = rows
        self.batch_size = stop - self.start
        self.num_rows = num_rows
        self.make = make
        self.seed = seed
        self.dynamic = dynamic

    def __call__(self, b: int) -> Batch:
        b = int(b)
        n = min(self.batch_size, self.num_rows - b * self.batch_size)
        first = b * self.global_batch_size + self.start  # stream position of row 0
        examples = [self.order(x) for x in range(first, first + n)]  # (epoch, key)
        rngs = None
        if self.dynamic:
            rngs = [example_rng(self.seed, epoch, key) for epoch, key in examples]
        return self.make([self.source[key] for _, key in examples], rngs)


def decode_batch(
    records: Sequence[bytes], *, max_seq_length: int, max_predictions_per_seq: int, pad_id: int = 0
) -> Batch:
    """`records.decode_records`, vectorized: the records are decoded together.

    The same arrays as decoding each record with `records.decode_record` and
    stacking them (the record layout is in `data_pipelines.records`); a record
    whose size does not match its header is refused.
    """
    t, p = max_seq_length, max_predictions_per_seq
    if not records:
        return decode_records([], max_seq_length=t, max_predictions_per_seq=p)
    sizes = np.fromiter(map(len, records), np.int64, len(records))
    if (sizes % 2).any() or (sizes < HEADER.size).any():
        i = int(np.flatnonzero((sizes % 2) | (sizes < HEADER.size))[0])
        raise ValueError(f"record {i}: {sizes[i]} bytes is not a {RECORD_ENCODING} record")
    words = np.frombuffer(b"".join(records), "<u2")  # every field is 2 or 4 bytes
    at = (np.cumsum(sizes) - sizes) // 2  # [N] first word of each record
    head = words[at[:, None] + np.arange(HEADER.size // 2)].astype(np.int64)  # [N, 6]
    magic, version, flags = head[:, 0], head[:, 1] & 0xFF, head[:, 1] >> 8
    length, seg_a, npred, nsp = head[:, 2], head[:, 3], head[:, 4], head[:, 5] & 0xFF
    bad = np.flatnonzero((magic != int.from_bytes(MAGIC, "little")) | (version != VERSION))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"not a {RECORD_ENCODING} record (magic {int(magic[i]).to_bytes(2, 'little')!r}, "
            f"version {version[i]})"
        )
    bad = np.flatnonzero((length > t) | (npred > p))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"record of length {length[i]} with {npred[i]} predictions exceeds max_seq_length="
            f"{t} / max_predictions_per_seq={p}"
        )
    w = np.where(flags & FLAG_WIDE, 2, 1)  # [N] words per token id
    ids_at = at + HEADER.size // 2
    pos_at = ids_at + w * length
    labels_at = pos_at + npred
    bad = np.flatnonzero(sizes // 2 != labels_at + w * npred - at)
    if bad.size:
        i = bad[0]
        raise ValueError(f"record {i}: {sizes[i]} bytes, but its header describes another size")

    def gather(start: np.ndarray, count: np.ndarray, stride: np.ndarray, width: int) -> tuple:
        """[N, width] values at words start + stride * j for j < count (0 elsewhere)."""
        j = np.arange(width)[None, :]
        valid = j < count[:, None]
        index = np.where(valid, start[:, None] + stride[:, None] * j, 0)
        low = words[index].astype(np.uint32)
        if (stride == 2).any():  # wide ids: int32 from two little-endian words
            high = words[np.where(valid & (stride[:, None] == 2), index + 1, 0)]
            low |= np.where(stride[:, None] == 2, high.astype(np.uint32) << 16, 0)
        return np.where(valid, low.view(np.int32), 0), valid

    ids, real = gather(ids_at, length, w, t)
    positions, predicted = gather(pos_at, npred, np.ones_like(w), p)
    labels, _ = gather(labels_at, npred, w, p)
    j = np.arange(t)[None, :]
    return {
        F.INPUT_IDS: np.where(real, ids, pad_id).astype(np.int32),
        F.INPUT_MASK: real.astype(np.int32),
        F.SEGMENT_IDS: (real & (j >= seg_a[:, None])).astype(np.int32),
        F.MASKED_LM_POSITIONS: positions,
        F.MASKED_LM_IDS: labels,
        F.MASKED_LM_WEIGHTS: predicted.astype(np.float32),
        F.NEXT_SENTENCE_LABELS: nsp.astype(np.int32),
    }


class _Examples:
    """A batch of records (+ a generator per record for dynamic masking) -> the 7 features."""

    def __init__(self, info: DatasetInfo):
        self.max_seq_length = int(info.max_seq_length)
        self.max_predictions_per_seq = int(info.max_predictions_per_seq)
        self.pad_id = int(info.pad_id)
        self.spec = info.masking if info.dynamic_masking else None

    def __call__(self, records: list[bytes], rngs: list[np.random.Generator] | None) -> Batch:
        ex = decode_batch(
            records,
            max_seq_length=self.max_seq_length,
            max_predictions_per_seq=self.max_predictions_per_seq,
            pad_id=self.pad_id,
        )
        if rngs is None:
            return ex
        # Row i is masked as mask_example(row i, rng=rngs[i]) would, row after row.
        masked = mask_rows(ex[F.INPUT_IDS], ex[F.INPUT_MASK].sum(axis=1), self.spec, rngs)
        return {
            **ex,
            F.INPUT_IDS: masked.input_ids,
            F.MASKED_LM_POSITIONS: masked.masked_lm_positions,
            F.MASKED_LM_IDS: masked.masked_lm_ids,
            F.MASKED_LM_WEIGHTS: masked.masked_lm_weights,
        }


class _Packs:
    """A batch of packs (each a tuple of records, + the pack's generator) -> packed rows;
    with dynamic masking a pack's pairs are masked in turn with its (seed, epoch, pack
    index) generator."""

    def __init__(self, examples: _Examples, max_sequences: int, max_predictions: int):
        self.examples = examples
        self.max_sequences = max_sequences
        self.max_predictions = max_predictions

    def __call__(
        self, packs: list[tuple[bytes, ...]], rngs: list[np.random.Generator] | None
    ) -> Batch:
        sizes = [len(pack) for pack in packs]
        records = [record for pack in packs for record in pack]
        if rngs is not None:  # every pair of a pack draws from the pack's generator
            rngs = [g for g, size in zip(rngs, sizes, strict=True) for _ in range(size)]
        return packing_lib.pack_batch(
            self.examples(records, rngs),
            np.repeat(np.arange(len(packs)), sizes),
            len(packs),
            max_seq_length=self.examples.max_seq_length,
            max_sequences=self.max_sequences,
            max_predictions=self.max_predictions,
            pad_id=self.examples.pad_id,
        )


def record_lengths(records: PretrainRecordSource) -> np.ndarray:
    """The token count of every record, read from the record headers."""
    out = np.empty(len(records), np.int32)
    for i in range(len(records)):
        out[i] = HEADER.unpack_from(records[i])[3]
    return out


@functools.lru_cache(maxsize=8)
def _cached_plan(data_dir: str, mtime: float, max_sequences: int, seed: int) -> np.ndarray:
    del mtime  # part of the cache key only: a re-created dataset is planned again
    info = load_dataset_info(data_dir)
    records = PretrainRecordSource.from_dataset(data_dir, info)
    try:
        return packing_lib.plan_packs(
            record_lengths(records), int(info.max_seq_length), max_sequences, seed
        )
    except ValueError as e:
        raise ValueError(f"{data_dir}: {e}") from e


def pack_plan(data_dir: str | os.PathLike, max_sequences: int, seed: int) -> np.ndarray:
    """The packs of a dataset (`packing.plan_packs` over its record lengths), cached."""
    data_dir = os.path.abspath(str(data_dir))
    mtime = os.path.getmtime(os.path.join(data_dir, DATASET_INFO))
    return _cached_plan(data_dir, mtime, max_sequences, seed)


def packed_shapes(info: DatasetInfo, max_sequences: int) -> tuple[int, int]:
    """(max_seq_length, prediction slots) of a packed row of this dataset."""
    t = int(info.max_seq_length)
    prob = float(info.masked_lm_prob if info.masking is None else info.masking.masked_lm_prob)
    return t, packing_lib.max_predictions_per_pack(
        t, int(info.max_predictions_per_seq), prob, max_sequences
    )


def make_pretrain_dataset(
    data_dir: str | os.PathLike,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    drop_remainder: bool = True,
    read_threads: int = 0,
    packing: bool = False,
    max_sequences_per_pack: int = DEFAULT_MAX_SEQUENCES_PER_PACK,
) -> grain.IterDataset:
    """The grain `IterDataset` behind `make_pretrain_iterator`.

    Args:
      data_dir: a directory written by `create_pretraining_data` (ArrayRecord format).
      global_batch_size: examples per step over all processes; each process yields
        global_batch_size // process_count.
      seed: shuffling and dynamic-masking seed, in [0, 2**31). Restoring a saved state
        needs an iterator built with the same arguments.
      shuffle: shuffle (a new permutation of all examples each epoch); False reads in
        record order.
      num_epochs: passes over the data; None repeats forever.
      process_index, process_count: this process reads rows [process_index * B,
        (process_index + 1) * B) of every global batch, B = global_batch_size //
        process_count; default from JAX. Processes that hold the same rows (replicas)
        pass the same index.
      worker_count: grain worker processes (0: decode in this process); the batches do
        not depend on it.
      worker_buffer_size: batches each worker prepares ahead.
      drop_remainder: with `num_epochs` set, drop the last partial global batch (else
        each process yields its part of it, possibly nothing).
      read_threads: grain reader threads; 0 reads in the iterating thread, the fastest for
        local files (reads take ~5 µs; threads only add GIL contention). Raise it for
        slow (network) file systems.
      packing: pack up to `max_sequences_per_pack` pairs per row (`data_pipelines.packing`);
        the rows gain position_ids, attention_segment_ids and next_sentence_positions,
        and next_sentence_labels becomes [B, max_sequences_per_pack] (-1: no pair).
        Packs, not examples, are then what is shuffled, split into batches and counted.
      max_sequences_per_pack: pairs per packed row at most.
    """
    info = load_dataset_info(data_dir)
    if info.format != "arrayrecord":
        raise ValueError(
            f"{data_dir}: a {info.format!r} dataset; the input pipeline reads ArrayRecord "
            "datasets only (TFRecord output is for other code bases). Re-create it with "
            "output_format='arrayrecord'."
        )
    if info.record_encoding != RECORD_ENCODING:
        raise ValueError(
            f"{data_dir}: record encoding {info.record_encoding!r}, expected {RECORD_ENCODING!r}"
        )
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None or positive, got {num_epochs}")

    source: Any = PretrainRecordSource.from_dataset(data_dir, info)
    make: Any = _Examples(info)
    if packing:
        source = PackedRecordSource(source, pack_plan(data_dir, max_sequences_per_pack, seed))
        make = _Packs(make, max_sequences_per_pack, packed_shapes(info, max_sequences_per_pack)[1])
    if not len(source):
        raise ValueError(f"{data_dir}: no examples")
    rows = process_rows(global_batch_size, process_index, process_count)
    batch_size = rows[1] - rows[0]
    if num_epochs is None:  # endless: as many batches as an index can count
        local_rows = sys.maxsize // global_batch_size * batch_size
    else:
        full, rest = divmod(num_epochs * len(source), global_batch_size)
        local_rows = full * batch_size
        if not drop_remainder:
            local_rows += min(max(rest - rows[0], 0), batch_size)
    read = _ReadBatch(
        source,
        GlobalOrder(len(source), seed=seed, shuffle=shuffle),
        global_batch_size=global_batch_size,
        rows=rows,
        num_rows=local_rows,
        make=make,
        seed=seed,
        dynamic=bool(info.dynamic_masking),
    )
    # One element per local batch (a last partial one with fewer rows): the state of
    # the iterator is the index of the next batch.
    ds = (
        grain.MapDataset.range(-(-local_rows // batch_size))
        .map(read)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * read_threads)
        )
    )
    if worker_count:
        # grain's worker processes read absl flags; outside an absl app they are unparsed.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.experimental.DatasetOptions(min_shm_size=MIN_SHARED_MEMORY_BYTES)
        ds = grain.experimental.WithOptionsIterDataset(ds, options).mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
    return ds


def make_pretrain_iterator(data_dir: str | os.PathLike, **kwargs: Any) -> Iterator[Batch]:
    """A checkpointable iterator of pre-training batches (see the module docstring).

    Takes the arguments of `make_pretrain_dataset`. Returns grain's `DatasetIterator`:
    iterate for batches; `get_state()` / `set_state()` checkpoint it.
    """
    return iter(make_pretrain_dataset(data_dir, **kwargs))


class DevicePrefetchIterator(grain.DatasetIterator):
    """Batches with `put` (e.g. the host-to-device copy) started `size` batches ahead.

    Each ``next()`` takes one more batch from `iterator`, calls `put` on it and returns
    the result of `put` for the batch `size` places earlier, so while the caller's step
    runs on one batch the next ones are already on their way to the devices (`put`
    returns without waiting for the copy, as `jax.device_put` does). The batches and
    their order are those of `iterator`. The state (`get_state` / `set_state`, and so
    Orbax checkpoints through `iterator_save_args`) is that of `iterator` after the
    batches returned so far, not after the ones fetched ahead: a restored iterator
    continues exactly after the last batch the caller received.
    """

    def __init__(self, iterator: Any, put: Callable[[Batch], Any], size: int = 2):
        super().__init__(iterator if isinstance(iterator, grain.DatasetIterator) else ())
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._iterator = iterator
        self._put = put
        self._size = size
        self._ahead: collections.deque[tuple[Any, Any]] = collections.deque()
        self._state = iterator.get_state()
        self._exhausted = False

    def __next__(self) -> Any:
        self._assert_not_closed()
        while len(self._ahead) <= self._size and not self._exhausted:
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._exhausted = True
                break
            self._ahead.append((self._put(batch), self._iterator.get_state()))
        if not self._ahead:
            raise StopIteration
        batch, self._state = self._ahead.popleft()
        return batch

    def get_state(self) -> Any:
        return copy.deepcopy(self._state)

    def set_state(self, state: Any) -> None:
        self._iterator.set_state(state)
        self._ahead.clear()
        self._state = self._iterator.get_state()
        self._exhausted = False


def prefetch_to_device(
    iterator: Any, put: Callable[[Batch], Any], size: int = 2
) -> DevicePrefetchIterator:
    """`iterator`'s batches passed through `put` `size` batches ahead (see
    `DevicePrefetchIterator`); checkpoint the returned iterator instead of `iterator`."""
    return DevicePrefetchIterator(iterator, put, size)


def save_iterator_state(iterator: Any, path: str | os.PathLike) -> None:
    """Writes the iterator state to a JSON file (atomically)."""
    storage.write_text(path, json.dumps(iterator.get_state()))


def restore_iterator_state(iterator: Any, path: str | os.PathLike) -> None:
    """Restores an iterator (built with the same arguments) from `save_iterator_state`."""
    iterator.set_state(json.loads(storage.read_text(path)))


def iterator_save_args(iterator: Any) -> Any:
    """Orbax save args for the iterator (`grain.checkpoint.CheckpointSave`)."""
    import grain.checkpoint as grain_checkpoint

    return grain_checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: Any) -> Any:
    """Orbax restore args for the iterator (`grain.checkpoint.CheckpointRestore`)."""
    import grain.checkpoint as grain_checkpoint

    return grain_checkpoint.CheckpointRestore(iterator)
