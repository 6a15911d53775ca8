"""Grain input pipeline over pre-training shards written by `pretraining_data`.

`make_pretrain_iterator(data_dir, global_batch_size=..., seed=...)` returns a grain
`DataLoader` iterator of dicts of numpy arrays with the 7 pre-training features:
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
* **Sharding and order.** grain's `IndexSampler` with ``ShardOptions(process_index,
  process_count, drop_remainder=True)``: each process owns a contiguous, disjoint slice
  of ``num_examples // process_count`` examples (so every process takes the same number
  of steps; the last ``num_examples % process_count`` examples, fewer than the number of
  processes, are never read), shuffles it with `seed` (a new permutation every epoch)
  and repeats it `num_epochs` times (forever for None). Defaults for the process
  index/count come from JAX. `drop_remainder` drops the last partial batch.
* **Dynamic masking.** When the dataset was written with ``dynamic_masking=True``, each
  example is masked on the fly by `pretraining_data.mask_example` with the generator
  `pretraining_data.example_rng(seed, epoch, example_index)`: the masks differ between
  epochs, are identical for a given (seed, epoch, example), and do not depend on the
  process count, shuffling or worker count. The masking parameters (probability,
  budget, whole-word masking, vocabulary tables) come from ``dataset_info.json``.
* **Workers.** ``worker_count=0`` decodes (and masks) in the calling process;
  ``worker_count=N`` uses grain's worker processes. With workers, grain batches within
  each worker, so which examples share a batch depends on `worker_count` (each epoch
  still reads every example of the process's slice once); resume with the same value.
* **Checkpointing.** The returned iterator is grain's `DataLoaderIterator`:
  ``state = it.get_state()`` (bytes) and ``it.set_state(state)`` on an iterator built
  with the same arguments resume exactly where it was (the next batches are identical).
  With Orbax, save it next to the train state with ``grain.checkpoint.CheckpointSave``
  / ``CheckpointRestore`` (handler ``grain.checkpoint.CheckpointHandler``), e.g.
  ``ocp.args.Composite(state=..., data=iterator_save_args(it))``; see
  `iterator_save_args` / `iterator_restore_args`. `save_iterator_state` /
  `restore_iterator_state` do the same with a plain JSON file.
* **TFRecord datasets** (``output_format="tfrecord"``) are for interoperability with
  other BERT code bases; this reader does not read them (ArrayRecord is the training
  format) and says so.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grain.python as grain
import numpy as np

from data_pipelines import features as F
from data_pipelines import packing as packing_lib
from data_pipelines import pretraining_data as pdata
from data_pipelines.packing import DEFAULT_MAX_SEQUENCES_PER_PACK

Batch = dict[str, np.ndarray]


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
    def from_dataset(
        cls, data_dir: str | os.PathLike, info: dict[str, Any]
    ) -> PretrainRecordSource:
        """The records of a dataset directory, given its `dataset_info.json` contents."""
        return cls(
            [os.path.join(str(data_dir), s["file"]) for s in info["shards"]],
            [s["num_examples"] for s in info["shards"]],
        )

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, record_key: int) -> bytes:
        key = int(record_key)
        if not 0 <= key < len(self):
            raise IndexError(f"record {key} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._starts, key, side="right")) - 1
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


class _Decode(grain.MapTransform):
    """Record bytes -> the 7 features (static masking: stored masks)."""

    def __init__(self, max_seq_length: int, max_predictions_per_seq: int, pad_id: int):
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.pad_id = pad_id

    def map(self, element: bytes) -> Batch:
        return pdata.decode_record(
            element,
            max_seq_length=self.max_seq_length,
            max_predictions_per_seq=self.max_predictions_per_seq,
            pad_id=self.pad_id,
        )


class _DecodeAndMask(grain.RandomMapTransform):
    """Record bytes -> the 7 features, masked with the per-(epoch, example) generator."""

    def __init__(self, decode: _Decode, spec: pdata.MaskingSpec):
        self.decode = decode
        self.spec = spec

    def random_map(self, element: bytes, rng: np.random.Generator) -> Batch:
        return _mask(self.decode.map(element), self.spec, rng)


def _mask(ex: Batch, spec: pdata.MaskingSpec, rng: np.random.Generator) -> Batch:
    """One decoded example, masked with `rng`."""
    length = int(ex[F.INPUT_MASK].sum())
    masked = pdata.mask_example(ex[F.INPUT_IDS], length, spec, rng=rng)
    return {
        **ex,
        F.INPUT_IDS: masked.input_ids,
        F.MASKED_LM_POSITIONS: masked.masked_lm_positions,
        F.MASKED_LM_IDS: masked.masked_lm_ids,
        F.MASKED_LM_WEIGHTS: masked.masked_lm_weights,
    }


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


class _DecodeAndPack(grain.MapTransform):
    """A pack's records -> one packed row (static masking: stored masks)."""

    def __init__(self, decode: _Decode, max_sequences: int, max_predictions: int):
        self.decode = decode
        self.max_sequences = max_sequences
        self.max_predictions = max_predictions

    def pack(self, element: tuple[bytes, ...], mask: Any = None) -> Batch:
        examples = [self.decode.map(record) for record in element]
        if mask is not None:
            examples = [mask(ex) for ex in examples]
        return packing_lib.pack_examples(
            examples,
            max_seq_length=self.decode.max_seq_length,
            max_sequences=self.max_sequences,
            max_predictions=self.max_predictions,
            pad_id=self.decode.pad_id,
        )

    def map(self, element: tuple[bytes, ...]) -> Batch:
        return self.pack(element)


class _DecodeMaskAndPack(grain.RandomMapTransform):
    """A pack's records -> one packed row; each pair is masked in turn with the pack's
    (seed, epoch, pack index) generator."""

    def __init__(self, pack: _DecodeAndPack, spec: pdata.MaskingSpec):
        self.packer = pack
        self.spec = spec

    def random_map(self, element: tuple[bytes, ...], rng: np.random.Generator) -> Batch:
        return self.packer.pack(element, functools.partial(_mask, spec=self.spec, rng=rng))


def record_lengths(records: PretrainRecordSource) -> np.ndarray:
    """The token count of every record, read from the record headers."""
    out = np.empty(len(records), np.int32)
    for i in range(len(records)):
        out[i] = pdata.HEADER.unpack_from(records[i])[3]
    return out


@functools.lru_cache(maxsize=8)
def _cached_plan(data_dir: str, mtime: float, max_sequences: int, seed: int) -> np.ndarray:
    del mtime  # part of the cache key only: a re-created dataset is planned again
    info = pdata.load_dataset_info(data_dir)
    records = PretrainRecordSource.from_dataset(data_dir, info)
    try:
        return packing_lib.plan_packs(
            record_lengths(records), int(info["max_seq_length"]), max_sequences, seed
        )
    except ValueError as e:
        raise ValueError(f"{data_dir}: {e}") from e


def pack_plan(data_dir: str | os.PathLike, max_sequences: int, seed: int) -> np.ndarray:
    """The packs of a dataset (`packing.plan_packs` over its record lengths), cached."""
    data_dir = os.path.abspath(str(data_dir))
    mtime = os.path.getmtime(os.path.join(data_dir, pdata.DATASET_INFO))
    return _cached_plan(data_dir, mtime, max_sequences, seed)


def packed_shapes(info: dict[str, Any], max_sequences: int) -> tuple[int, int]:
    """(max_seq_length, prediction slots) of a packed row of this dataset."""
    t = int(info["max_seq_length"])
    masking = info.get("masking") or {}
    prob = float(masking.get("masked_lm_prob", info.get("masked_lm_prob", 0.15)))
    return t, packing_lib.max_predictions_per_pack(
        t, int(info["max_predictions_per_seq"]), prob, max_sequences
    )


class EpochSeededSampler:
    """One global order of the examples, read by every process in its own stride.

    The order is a per-epoch shuffle of *all* examples (grain's `index_shuffle` through
    `IndexSampler` without sharding). grain's DataLoader asks process p of P for the
    global positions p, p + P, p + 2P, ...; so step t's global batch (positions
    [t*B, (t+1)*B)) holds the same examples whatever the number of processes, and a run
    on two hosts trains on exactly the batches a run on one host would.

    Each record's generator is seeded by (seed, epoch, example index), so a dynamic mask
    can be reproduced from which example it is and in which epoch.
    """

    def __init__(
        self,
        num_records: int,
        shard_options: grain.ShardOptions,
        *,
        shuffle: bool,
        num_epochs: int | None,
        seed: int,
        seed_records: bool = True,
    ):
        self._inner = grain.IndexSampler(
            num_records=num_records,
            shard_options=grain.NoSharding(),
            shuffle=shuffle,
            num_epochs=num_epochs,
            seed=seed,
        )
        self._shard_options = shard_options  # how the DataLoader strides, not a slice
        self._num_records = num_records
        self._seed = seed
        self._seed_records = seed_records

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        meta = self._inner[index]
        if not self._seed_records:  # static masking: no generator needed
            return grain.RecordMetadata(index=meta.index, record_key=meta.record_key)
        epoch = index // self._num_records
        rng = pdata.example_rng(self._seed, epoch, int(meta.record_key))
        return grain.RecordMetadata(index=meta.index, record_key=meta.record_key, rng=rng)

    def __repr__(self) -> str:
        return f"EpochSeededSampler({self._inner!r}, {self._shard_options!r})"


def make_pretrain_loader(
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
) -> grain.DataLoader:
    """The grain `DataLoader` behind `make_pretrain_iterator` (same arguments)."""
    info = pdata.load_dataset_info(data_dir)
    if info["format"] != "arrayrecord":
        raise ValueError(
            f"{data_dir}: a {info['format']!r} dataset; the input pipeline reads ArrayRecord "
            "datasets only (TFRecord output is for other code bases). Re-create it with "
            "output_format='arrayrecord'."
        )
    if info.get("record_encoding") != pdata.RECORD_ENCODING:
        raise ValueError(
            f"{data_dir}: record encoding {info.get('record_encoding')!r}, expected "
            f"{pdata.RECORD_ENCODING!r}"
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
    batch_size = global_batch_size // process_count

    source = PretrainRecordSource.from_dataset(data_dir, info)
    # The DataLoader strides over one global order (see EpochSeededSampler).
    shard_options = grain.ShardOptions(
        shard_index=process_index, shard_count=process_count, drop_remainder=True
    )
    if len(source) < process_count:
        raise ValueError(
            f"{data_dir}: {len(source)} examples cannot be shared by {process_count} processes"
        )
    decode = _Decode(info["max_seq_length"], info["max_predictions_per_seq"], info["pad_id"])
    spec = pdata.MaskingSpec.from_json(info["masking"]) if info["dynamic_masking"] else None
    first: grain.Transformation
    if packing:
        plan = pack_plan(data_dir, max_sequences_per_pack, seed)
        source = PackedRecordSource(source, plan)
        if len(source) < process_count:
            raise ValueError(
                f"{data_dir}: {len(source)} packs cannot be shared by {process_count} processes"
            )
        packer = _DecodeAndPack(
            decode, max_sequences_per_pack, packed_shapes(info, max_sequences_per_pack)[1]
        )
        first = packer if spec is None else _DecodeMaskAndPack(packer, spec)
    else:
        first = decode if spec is None else _DecodeAndMask(decode, spec)
    sampler = EpochSeededSampler(
        len(source),
        shard_options,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
        seed_records=bool(info["dynamic_masking"]),
    )
    if worker_count:
        # grain's worker processes read absl flags; outside an absl app they are unparsed.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[first, grain.Batch(batch_size, drop_remainder=drop_remainder)],
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
        read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=16),
    )


def make_pretrain_iterator(
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
) -> Iterator[Batch]:
    """A checkpointable iterator of pre-training batches (see the module docstring).

    Args:
      data_dir: a directory written by `create_pretraining_data` (ArrayRecord format).
      global_batch_size: examples per step over all processes; each process yields
        global_batch_size // process_count.
      seed: shuffling and dynamic-masking seed, in [0, 2**31). Restoring a saved state
        needs an iterator built with the same arguments.
      shuffle: shuffle (a new permutation each epoch); False reads in record order.
      num_epochs: passes over the data; None repeats forever.
      process_index, process_count: this process's slice; default from JAX.
      worker_count: grain worker processes (0: decode in this process).
      worker_buffer_size: batches each worker prepares ahead.
      drop_remainder: drop the last partial batch (with `num_epochs` set); slices per
        process are always of equal size.
      read_threads: grain reader threads; 0 reads in the iterating thread, the fastest for
        local files (reads take ~5 µs; threads only add GIL contention). Raise it for
        slow (network) file systems.
      packing: pack up to `max_sequences_per_pack` pairs per row (`data_pipelines.packing`);
        the rows gain position_ids, attention_segment_ids and next_sentence_positions,
        and next_sentence_labels becomes [B, max_sequences_per_pack] (-1: no pair).
        Packs, not examples, are then what is shuffled, sharded and counted.
      max_sequences_per_pack: pairs per packed row at most.
    Returns:
      grain's `DataLoaderIterator`: iterate for batches; `get_state()` / `set_state()`
      checkpoint it.
    """
    loader = make_pretrain_loader(
        data_dir,
        global_batch_size=global_batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        drop_remainder=drop_remainder,
        read_threads=read_threads,
        packing=packing,
        max_sequences_per_pack=max_sequences_per_pack,
    )
    return iter(loader)


def save_iterator_state(iterator: Any, path: str | os.PathLike) -> None:
    """Writes the iterator state to a JSON file (atomically)."""
    state = iterator.get_state()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(state if isinstance(state, bytes) else json.dumps(state).encode())
    os.replace(tmp, path)


def restore_iterator_state(iterator: Any, path: str | os.PathLike) -> None:
    """Restores an iterator (built with the same arguments) from `save_iterator_state`."""
    with open(path, "rb") as f:
        iterator.set_state(f.read())


def iterator_save_args(iterator: Any) -> Any:
    """Orbax save args for the iterator (`grain.checkpoint.CheckpointSave`)."""
    import grain.checkpoint as grain_checkpoint

    return grain_checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: Any) -> Any:
    """Orbax restore args for the iterator (`grain.checkpoint.CheckpointRestore`)."""
    import grain.checkpoint as grain_checkpoint

    return grain_checkpoint.CheckpointRestore(iterator)
