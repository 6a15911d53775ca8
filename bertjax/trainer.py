"""What every training loop shares: the train state, the step's gradient accumulation and
guarded update, the metric writer, preemption, multi-process rows, and checkpoint restore.

pretrain.py and finetune.py are both built from these pieces; neither reaches into the
other. A loop's own parts (its data, its loss, what it evaluates and keeps) stay in it.

Determinism: a step's dropout key is fold_in(state.rng, state.step), so a state restored
from a checkpoint continues with the keys the uninterrupted run would have used.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from bertjax import checkpoint as ckpt
from bertjax import sharding, storage
from bertjax.model import stack_layers

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient and the policy says stop."""


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken (skipped updates included)
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: the run's base key; step keys are folded from it
    nonfinite_steps: jax.Array  # int32 scalar: updates skipped for non-finite values


def new_train_state(
    seed_key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    batch: dict[str, jax.Array],
    prng_impl: str | None = None,
) -> TrainState:
    """Fresh state from raw key data of `prng_impl` (None: JAX's default), initialising the
    model on `batch` (shapes only); parameters keep their logical boxes."""
    init_key, dropout_key = jax.random.split(jax.random.wrap_key_data(seed_key, impl=prng_impl))
    params = model.init(init_key, batch, train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(dropout_key),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )


# --- The step -----------------------------------------------------------------------------------


def split_micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """[B, ...] -> [k, B/k, ...]; micro-batch i takes rows i, i+k, ... so that every
    micro-batch stays spread over all data-parallel devices."""

    def split(x):
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree_util.tree_map(split, batch)


def accumulate_gradients(
    grad_fn: Any, params: Any, batch: dict[str, jax.Array], key: jax.Array, k: int
) -> tuple[Any, Any]:
    """Sums `grad_fn(params, micro, key_i) -> ((loss, aux), grads)` over k micro-batches
    (a lax.scan inside the jitted step); returns (grads, aux) summed."""
    if k == 1:
        (_, aux), grads = grad_fn(params, batch, key)
        return grads, aux
    micro = split_micro_batches(batch, k)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (_, aux_shape), grad_shape = jax.eval_shape(grad_fn, params, first, key)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (grad_shape, aux_shape))

    def body(carry, xs):
        i, mb = xs
        (_, aux), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
        return jax.tree_util.tree_map(jnp.add, carry, (grads, aux)), None

    (grads, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return grads, aux


def apply_guarded_update(
    state: TrainState, grads: Any, loss: jax.Array, tx: optax.GradientTransformation
) -> tuple[TrainState, jax.Array, jax.Array]:
    """The optimizer update, skipped (and counted) when the loss or the gradient norm is not
    finite. Returns (new state, gradient norm, finite flag)."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (1 - finite.astype(jnp.int32)),
    )
    return new_state, grad_norm, finite


def params_are_finite(params: Any) -> jax.Array:
    """A bool scalar: every parameter value is finite."""
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# --- Metrics output -----------------------------------------------------------------------------


class MetricWriter:
    """metrics.jsonl (append-only across restarts, never a step twice) and TensorBoard.

    On opening, the records after `resume_step` (those of steps a restarted run computes
    again) are dropped, and so are those at or before it for which `keep(record)` is False
    (a loop that may redo an evaluation of `resume_step` passes which ones to keep);
    `resume_step=-1` starts a fresh file. Only process 0 writes.
    """

    def __init__(self, workdir: str, resume_step: int, keep: Any = None):
        self.enabled = jax.process_index() == 0
        self.path = storage.join(workdir, "metrics.jsonl")
        # An object has no append: on a bucket the file is rewritten whole (atomically) at
        # every write from the lines kept here; locally lines are appended.
        self.remote = storage.is_remote(self.path)
        self.lines: list[str] = []
        self.tb = None
        self.tb_dir = storage.join(workdir, "tensorboard")
        self.tb_local = None
        if not self.enabled:
            return
        if storage.exists(self.path):
            kept = []
            for line in storage.read_text(self.path).splitlines(keepends=True):
                try:
                    record = json.loads(line)
                    if record["step"] <= resume_step and (keep is None or keep(record)):
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
            storage.write_text(self.path, "".join(kept))
            self.lines = kept
        try:
            from tensorboardX import SummaryWriter

            if self.remote:
                # tensorboardX's own bucket writer re-uploads from its finalizer, after the
                # run; the events are written locally and uploaded whole at every flush.
                import tempfile

                self.tb_local = tempfile.mkdtemp(prefix="bertjax-tensorboard-")
            self.tb = SummaryWriter(self.tb_local or self.tb_dir)
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self.tb = None

    def write(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **({"split": split} if split != "train" else {}), **values}
        line = json.dumps(record) + "\n"
        if self.remote:
            self.lines.append(line)
            storage.write_text(self.path, "".join(self.lines))
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
            self.tb.flush()
            self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        if self.tb_local is not None:
            for name in sorted(os.listdir(self.tb_local)):
                storage.copy_file(
                    os.path.join(self.tb_local, name), storage.join(self.tb_dir, name)
                )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self._upload_tensorboard()
        if self.tb_local is not None:
            import shutil

            shutil.rmtree(self.tb_local, ignore_errors=True)
            self.tb_local = None


# --- Preemption ---------------------------------------------------------------------------------


class Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (`check`, which agrees
    across processes)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            del signum, frame
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def check(self) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.array([self.requested]))
            self.requested = bool(np.any(flags))
        return self.requested


class Preempted(Exception):
    """Raised after the preemption checkpoint is written (the CLI exits with status 143)."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step}")
        self.step = step


# --- Processes ----------------------------------------------------------------------------------

# The persistent XLA compilation cache. A fine-tuning run compiles its step once per
# bucket length, and GLUE sweeps (tasks x learning rates x seeds) compile the same shapes
# again in every run: 6-25 s each on a CPU, minutes for bert-large on an accelerator.
# JAX keys each entry on the program, the compiler flags and the backend, so a hit is the
# executable the compiler would have built.
COMPILATION_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own variable; wins when set
COMPILATION_CACHE_MAX_BYTES = 4 << 30  # least-recently-used entries go past this size


def use_compilation_cache(directory: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in `directory` and return the directory.

    `directory` may be local or any path JAX's cache accepts (`gs://` included); None or ""
    leaves the cache off. JAX's own JAX_COMPILATION_CACHE_DIR environment variable, when
    set, takes the place of `directory`. Entries are kept up
    to COMPILATION_CACHE_MAX_BYTES, evicted least recently used; with a size limit JAX
    guards the directory with a file lock, so concurrent processes (hosts of a pod given a
    shared cache, parallel test workers) never read a half-written entry. Programs that
    compile in under a second are not stored (JAX's default threshold).

    Raises:
      ValueError: `directory` is an existing file.
    """
    directory = os.environ.get(COMPILATION_CACHE_ENV) or directory
    if not directory:
        return None
    if storage.exists(directory) and not storage.isdir(directory):
        raise ValueError(f"compilation cache {directory}: exists and is not a directory")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    return directory


def sync(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_batch_block(mesh: Any, rules: Any, global_batch_size: int) -> tuple[int, int]:
    """(index, count): this process's rows of a global batch are block `index` of `count`.

    `jax.make_array_from_process_local_data` (`sharding.global_batch`) places a process's
    local rows on the rows its devices address in the batch sharding, in increasing
    order. Asked here through that sharding, the rows must form one contiguous block of
    ``global_batch_size // count`` rows starting at ``index * global_batch_size // count``,
    which is what the input pipeline reads for (process_index=index,
    process_count=count). Usually index = jax.process_index() and count =
    jax.process_count(); processes whose devices replicate the same rows get the same
    block, and a device order that does not follow the process index is followed too.

    Raises ValueError when the process holds no device of the mesh or its rows are not
    one of equal contiguous blocks.
    """
    g = global_batch_size
    held = sharding.batch_sharding(mesh, rules, 1).addressable_devices_indices_map((g,))
    spans = sorted({idx[0].indices(g)[:2] for idx in held.values()})
    if not spans:
        raise ValueError(f"process {jax.process_index()} holds no device of the mesh")
    start, stop = spans[0][0], spans[-1][1]
    rows = stop - start
    contiguous = all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))
    if not contiguous or g % rows or start % rows:
        raise ValueError(
            f"process {jax.process_index()} holds rows {spans} of the global batch of {g}: "
            "not one of equal contiguous blocks; order the mesh devices by process"
        )
    return start // rows, g // rows


def global_batch(mesh: Any, rules: Any, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The sharded global batch from a host batch that every process holds whole ([B, ...]
    arrays): each process contributes its block of rows (`process_batch_block`)."""
    if jax.process_count() > 1:
        size = len(next(iter(batch.values())))
        index, count = process_batch_block(mesh, rules, size)
        rows = size // count
        batch = {k: v[index * rows : (index + 1) * rows] for k, v in batch.items()}
    return sharding.global_batch(mesh, rules, batch)


# --- Checkpoints --------------------------------------------------------------------------------


class JsonState:
    """A JSON value saved beside the train state by `checkpoint.TrainCheckpointer` in place of
    a data iterator (it speaks the iterator protocol grain's checkpoint handler uses:
    get_state / set_state / start_prefetch). A loop whose batches are a pure function of
    its position saves that position (and whatever else it must resume) this way."""

    def __init__(self, value: Any = None):
        self.value = value

    def get_state(self) -> bytes:
        return json.dumps(self.value, sort_keys=True).encode("utf-8")

    def set_state(self, state: bytes) -> None:
        self.value = json.loads(state.decode("utf-8"))

    def start_prefetch(self) -> None:
        pass


def save_checkpoint(
    checkpointer: ckpt.TrainCheckpointer, step: int, state: TrainState, data: Any, *, force=False
) -> None:
    """Saves (state, data) at `step`; raises NonFiniteError rather than checkpoint parameters
    holding non-finite values."""
    if not bool(jax.jit(params_are_finite)(state.params)):
        raise NonFiniteError(f"step {step}: parameters hold non-finite values; not checkpointing")
    checkpointer.save(step, state, data, force=force)


def restore_target(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings: what Orbax restores a state into."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def load_params_into_state(
    state: TrainState,
    state_sharding: Any,
    params: dict[str, Any],
    *,
    source: str,
    scan_layers: bool,
    num_layers: int,
) -> tuple[TrainState, list[str]]:
    """The init-from-checkpoint path: `params` (host arrays in the canonical layer_N layout,
    stacked here when the model scans its layers) overlaid on a sharded state's parameters.
    Returns (state with them, names of the parameters `params` lacked, which keep their
    fresh values). Raises checkpoint.CheckpointError naming `source` when a tensor is not
    in the model or has another shape."""
    if scan_layers:
        params = stack_layers(params, num_layers)
    merged, fresh = ckpt.load_into_sharded(
        state.params, params, state_sharding.params, source=source
    )
    return state.replace(params=merged), fresh
