"""How the fine-tuning engine cuts a task's splits into batches (data_pipelines/bucketing.py).

Every batch holds `train.batch_size` rows, the last one of an epoch filled up with weight-0
copies of a real row (`WEIGHT`). With `data.bucket_multiple` (default 32) each batch is cut to
the smallest bucket length that fits its longest row, so the step is compiled once per bucket
length instead of running every row at max_seq_length; padding is masked, so a row's loss and
outputs do not depend on its bucket. The training batches of an epoch are a pure function of
(seed, epoch); evaluation and prediction run in length order and come back in input order.
With `data.packing` (sequence-level tasks: GLUE) a batch's `train.batch_size` examples share
rows of max_seq_length tokens instead, several per row, each with its own positions, [CLS] and
attention (`Batching`, `bucketing.pack`): the step computes on far fewer padding tokens, an
example's loss and outputs are those it has alone in a row, and the number of examples per
step, hence the recipe, is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax.finetune_task import MODEL_INPUTS, Split
from data_pipelines import bucketing

WEIGHT = "weight"  # 1 for real rows, 0 for the rows that fill up a last batch
PACKED_SLOTS = 32  # packing: the most examples one row holds (K)


def take(
    arrays: dict[str, np.ndarray], batch: bucketing.Batch, batch_size: int, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """The host batch of `batch`: [batch_size] rows (its examples, then copies of its first
    example) of the arrays `keys`, per-token ones cut to [batch_size, batch.length, ...], plus
    `weight` float32 [batch_size] (1 for the examples, 0 for the copies)."""
    n = len(batch.indices)
    rows = np.concatenate([batch.indices, np.full(batch_size - n, batch.indices[0])])
    out = {}
    for k in keys:
        value = arrays[k][rows]
        out[k] = value[:, : batch.length] if value.ndim >= 2 else value
    weight = np.zeros(batch_size, np.float32)
    weight[:n] = 1.0
    out[WEIGHT] = weight
    return out


def bucketing_figures(
    lengths: np.ndarray, batches: Sequence[bucketing.Batch], batch_size: int, max_length: int
) -> dict[str, Any]:
    """`bucketing.describe` of `batches` plus `padding_fraction_unbucketed`: the padding the
    same rows would carry at max_length."""
    figures = bucketing.describe(lengths, batches, batch_size)
    slots = bucketing.steps_per_epoch(len(lengths), batch_size) * batch_size * max_length
    figures["shapes"] = list(figures["shapes"])
    figures["examples_per_bucket"] = {str(k): v for k, v in figures["examples_per_bucket"].items()}
    figures["padding_fraction_unbucketed"] = 1.0 - float(np.sum(lengths)) / max(slots, 1)
    return figures


@dataclasses.dataclass
class Batching:
    """How a run cuts its splits into batches (data_pipelines/bucketing.py).

    Bucketed (the default): `batch_size` rows per training batch, `eval_batch` per
    prediction batch, each padded to a bucket length. Packed (`packing`, sequence-level
    tasks): a training batch's `batch_size` examples share rows of `max_length` tokens,
    padded to one of `row_counts` rows (at most `max_shapes` counts, multiples of
    `row_multiple`, chosen by `plan` for the whole run); prediction batches are packed
    rows of the whole split, about `eval_batch` examples' worth each.
    """

    batch_size: int
    eval_batch: int
    buckets: tuple[int, ...]
    max_length: int
    packing: bool = False
    row_multiple: int = 1  # packed training rows: data-parallel size x grad_accum_steps
    eval_row_multiple: int = 1  # packed prediction rows: data-parallel size
    max_shapes: int = 2
    row_counts: tuple[int, ...] = ()
    planned: dict[int, list[bucketing.Batch]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"buckets": list(self.buckets), "packing": self.packing}
        if self.packing:
            out.update(row_counts=list(self.row_counts), max_examples_per_row=PACKED_SLOTS)
        return out

    def _packed_epoch(self, lengths: np.ndarray, seed: int, epoch: int) -> list[bucketing.Batch]:
        return bucketing.packed_train_batches(
            lengths, self.batch_size, seed=seed, epoch=epoch, length=self.max_length,
            max_slots=PACKED_SLOTS,
        )  # fmt: skip

    def plan(self, lengths: np.ndarray, *, seed: int, num_epochs: int) -> None:
        """Packed: packs every epoch's batches once, chooses the training row counts from
        them and keeps the batches for `train_epoch`."""
        if self.packing:
            epochs = {e: self._packed_epoch(lengths, seed, e) for e in range(1, num_epochs + 1)}
            self.row_counts = bucketing.choose_row_counts(
                [b.num_rows for batches in epochs.values() for b in batches],
                multiple=self.row_multiple,
                max_shapes=self.max_shapes,
            )
            self.planned = {e: bucketing.round_rows(b, self.row_counts) for e, b in epochs.items()}

    def train_epoch(self, lengths: np.ndarray, *, seed: int, epoch: int) -> list[bucketing.Batch]:
        """The training batches of `epoch` (every example once; see `bucketing`)."""
        if not self.packing:
            return bucketing.train_batches(
                lengths, self.batch_size, seed=seed, epoch=epoch, buckets=self.buckets
            )
        if epoch not in self.planned:
            raise RuntimeError(f"Batching.plan did not cover epoch {epoch}")
        return self.planned[epoch]

    def eval(self, lengths: np.ndarray) -> list[bucketing.Batch]:
        """Prediction batches covering every example once."""
        if not self.packing:
            return bucketing.eval_batches(lengths, self.eval_batch, buckets=self.buckets)
        mean = float(np.mean(lengths)) if len(lengths) else 1.0
        rows = max(1, math.ceil(self.eval_batch * mean / self.max_length))
        rows = -(-rows // self.eval_row_multiple) * self.eval_row_multiple
        return bucketing.packed_eval_batches(
            lengths, rows_per_batch=rows, length=self.max_length, max_slots=PACKED_SLOTS
        )

    def host(
        self, split: Split, batch: bucketing.Batch, keys: Sequence[str], *, training: bool
    ) -> dict[str, np.ndarray]:
        """The host arrays of `batch` of `split` (`take`, or `bucketing.take_packed` with
        `weight`)."""
        if batch.packing is None:
            batch_size = self.batch_size if training else self.eval_batch
            return take(split.arrays, batch, batch_size, keys)
        return bucketing.take_packed(
            split.arrays, batch, keys, lengths=split.lengths, max_slots=PACKED_SLOTS,
            token_keys=MODEL_INPUTS, weight_key=WEIGHT,
        )  # fmt: skip
