"""Device mesh, logical-axis rules, and the shardings of state and batches.

The model names its dimensions (batch, length, embed, heads, kv, mlp, vocab); the rules in
the experiment config map them onto a mesh with axes (data, fsdp, tensor):

    batch  -> (data, fsdp)   data parallel over both axes
    embed  -> fsdp           parameters and optimizer state sharded ZeRO-3 style
    heads, mlp, vocab -> tensor   Megatron-style tensor parallelism
    layers -> replicated     the stacked axis of scanned layers (model.scan_layers)

Rules apply in order and a mesh axis is used at most once per array, so activations
([batch, length, embed]) shard their batch over (data, fsdp) and keep embed whole, while
parameters (no batch dimension) shard embed over fsdp.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# logical axis -> mesh axes, in order of precedence
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The `mesh` group of every experiment: axis sizes (-1 takes the devices the other axes
    leave) and the logical-axis rules."""

    data: int = -1  # data-parallel axis (-1 = the devices the other axes leave)
    fsdp: int = 1  # parameter/optimizer-state sharding axis (ZeRO-3)
    tensor: int = 1  # tensor-parallel axis (heads, mlp, vocab)
    rules: Rules = DEFAULT_RULES  # logical axis -> mesh axes, in order of precedence

    @classmethod
    def from_config_dict(cls, mesh: Any) -> MeshConfig:
        values = dict(mesh.to_dict() if hasattr(mesh, "to_dict") else mesh)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.mesh: unknown keys {unknown}; known: {sorted(known)}")
        if "rules" in values:
            values["rules"] = tuple(
                (str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                for name, axes in values["rules"]
            )
        return cls(**values)


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 and checks that the axes multiply to the device count."""
    sizes = [config.data, config.fsdp, config.tensor]
    for name, size in zip(MESH_AXES, sizes, strict=True):
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh.{name}={size}: must be a positive size or -1")
    if sizes.count(-1) > 1:
        raise ValueError(
            f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes, strict=True))}"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh: {dict(zip(MESH_AXES, sizes, strict=True))} does not divide "
                f"{num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"config.mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are "
            f"{num_devices} devices"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    if len(devices) == len(jax.devices()) and devices[0].platform != "cpu":
        # Topology-aware device order (ICI rings on TPU, NVLink islands on GPU).
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    else:
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """Number of shards of the batch dimension."""
    spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def logical_shardings(mesh: Mesh, rules: Rules, abstract_tree: Any) -> Any:
    """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes.

    A dimension whose size the mesh axes do not divide (BERT's 30,522-token vocab over a
    tensor axis of 4, say) is replicated instead of failing; the rest stay sharded.
    """
    specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules)
    shapes = nn.meta.unbox(abstract_tree)

    def fit(spec: PartitionSpec, x: Any) -> NamedSharding:
        dims = []
        padded = tuple(spec) + (None,) * (len(x.shape) - len(spec))
        for size, axes in zip(x.shape, padded, strict=True):
            names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
            ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
            dims.append(axes if size % ways == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*dims))

    return jax.tree_util.tree_map(
        fit, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over the data axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def global_batch(mesh: Mesh, rules: Rules, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's rows."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
        for k, v in local.items()
    }


def check_divisible(global_batch_size: int, mesh: Mesh, rules: Rules, *, what: str) -> None:
    dp = data_parallel_size(mesh, rules)
    if global_batch_size % dp:
        raise ValueError(
            f"{what}={global_batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(mesh.shape)})"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"{what}={global_batch_size} is not divisible by the number of processes "
            f"{jax.process_count()}"
        )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls jax.distributed.initialize when the run is multi-process.

    Explicit flags win; otherwise the environment decides: a TPU pod slice (more than one
    TPU worker), a SLURM job with several tasks, or JAX_COORDINATOR_ADDRESS set. On CPU the
    collectives go through gloo. Returns whether it initialised.
    """
    env = os.environ
    explicit = coordinator_address is not None
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    auto = (
        len(tpu_hosts) > 1
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or "JAX_COORDINATOR_ADDRESS" in env
    )
    if not explicit and not auto:
        return False
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True


class WorkdirNotSharedError(ValueError):
    """A multi-host run whose workdir is not the same storage on every host."""


def check_shared_workdir(workdir: str) -> None:
    """On a multi-process run, checks that every process sees the same `workdir`.

    Process 0 writes a token file into it; after a barrier every process reads it back.
    A process that does not find it (each host given its own local disk) makes every process
    stop with one line: each host would otherwise write its own part of a checkpoint to its
    own disk. A no-op on one process.
    """
    if jax.process_count() < 2:
        return
    import uuid

    from jax.experimental import multihost_utils

    from bertjax import storage

    # One token per run: every process agrees on process 0's random name.
    name = np.frombuffer(uuid.uuid4().bytes[:8], np.uint32).copy()
    name = multihost_utils.broadcast_one_to_all(name)
    token = storage.join(workdir, f".bertjax-shared-{int(name[0]):08x}{int(name[1]):08x}")
    if jax.process_index() == 0:
        storage.write_text(token, "written by process 0\n")
    multihost_utils.sync_global_devices("bertjax: shared-workdir token written")
    seen = np.int32(storage.exists(token))
    all_seen = multihost_utils.process_allgather(seen)
    multihost_utils.sync_global_devices("bertjax: shared-workdir token read")
    if jax.process_index() == 0:
        storage.remove(token)
    missing = [int(i) for i in np.flatnonzero(np.asarray(all_seen) == 0)]
    if missing:
        raise WorkdirNotSharedError(
            f"{workdir}: process(es) {missing} of {jax.process_count()} do not see the file "
            "process 0 wrote there; the workdir of a multi-host run must be shared storage "
            "(a bucket such as gs://..., or a shared filesystem)"
        )


def sharded_init(init_fn: Any, seed_key: jax.Array, mesh: Mesh, rules: Rules):
    """(abstract state, its shardings, jitted init) for `init_fn(seed_key)`.

    eval_shape -> logical partition specs -> NamedShardings -> jit(init, out_shardings):
    the state is created directly in its sharded layout, never whole on one device.
    Call inside `with mesh, nn.logical_axis_rules(rules)`.
    """
    boxed = jax.eval_shape(init_fn, seed_key)
    shardings = logical_shardings(mesh, rules, boxed)
    init = jax.jit(lambda key: nn.meta.unbox(init_fn(key)), out_shardings=shardings)
    return nn.meta.unbox(boxed), shardings, init
