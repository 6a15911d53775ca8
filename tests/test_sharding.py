"""Mesh construction, logical-axis rules and the shardings they give (8 fake CPU devices)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bertjax import sharding
from bertjax.config import model_config_for_size
from bertjax.model import BertForPreTraining, dummy_batch
from bertjax.sharding import DEFAULT_RULES, MeshConfig
from data_pipelines import features as F


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "cfg, shape",
    [
        (MeshConfig(), (8, 1, 1)),
        (MeshConfig(data=2, fsdp=2, tensor=2), (2, 2, 2)),
        (MeshConfig(data=-1, fsdp=4), (2, 4, 1)),
        (MeshConfig(data=1, fsdp=-1, tensor=2), (1, 4, 2)),
    ],
)
def test_mesh_shape(cfg, shape):
    assert sharding.mesh_shape(cfg, 8) == shape


@pytest.mark.parametrize(
    "cfg, message",
    [
        (MeshConfig(data=3), "data\\*fsdp\\*tensor = 3 but there are 8 devices"),
        (MeshConfig(data=-1, fsdp=3), "does not divide 8 devices"),
        (MeshConfig(data=-1, fsdp=-1), "at most one axis may be -1"),
        (MeshConfig(data=0), "config.mesh.data=0"),
    ],
)
def test_bad_meshes_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(cfg, 8)


def _param_shardings(mesh, vocab_size: int):
    """The default-rule shardings of the parameters of a tiny pre-training model."""
    cfg = model_config_for_size(
        "tiny",
        vocab_size=vocab_size,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    abstract = jax.eval_shape(
        lambda: BertForPreTraining(cfg).init(jax.random.key(0), dummy_batch(cfg), train=False)
    )
    return sharding.logical_shardings(mesh, DEFAULT_RULES, abstract)["params"]


def test_parameter_and_activation_specs():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    shard = _param_shardings(mesh, vocab_size=64)
    layer = shard["bert"]["encoder"]["layer_0"]
    assert layer["attention"]["self"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
    assert layer["attention"]["output"]["dense"]["kernel"].spec == P("tensor", None, "fsdp")
    assert layer["intermediate"]["dense"]["kernel"].spec == P("fsdp", "tensor")
    assert layer["output"]["dense"]["kernel"].spec == P("tensor", "fsdp")
    assert shard["bert"]["embeddings"]["word_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    # Activations: batch over (data, fsdp); embed then finds fsdp taken and stays whole.
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), DEFAULT_RULES) == P(
        ("data", "fsdp"), None, None
    )
    assert sharding.data_parallel_size(mesh, DEFAULT_RULES) == 4


def test_global_batch_assembly_and_divisibility():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    local = {F.INPUT_IDS: np.arange(8 * 3).reshape(8, 3).astype(np.int32)}
    batch = sharding.global_batch(mesh, DEFAULT_RULES, local)
    assert batch[F.INPUT_IDS].shape == (8, 3)
    np.testing.assert_array_equal(np.asarray(batch[F.INPUT_IDS]), local[F.INPUT_IDS])
    assert batch[F.INPUT_IDS].sharding.spec == P(("data", "fsdp"), None)
    with pytest.raises(
        ValueError, match="batch_size=6 is not divisible by the data-parallel size 4"
    ):
        sharding.check_divisible(6, mesh, DEFAULT_RULES, what="batch_size")


def test_indivisible_dimension_is_replicated_not_an_error():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    shard = _param_shardings(mesh, vocab_size=30522)
    # 30522 is not divisible by tensor=4: the vocab dimension is replicated...
    assert shard["bert"]["embeddings"]["word_embeddings"]["embedding"].spec == P(None, "fsdp")
    assert shard["cls"]["predictions"]["output_bias"].spec == P(None)
    # ...while divisible dimensions keep their tensor sharding.
    layer = shard["bert"]["encoder"]["layer_0"]
    assert layer["intermediate"]["dense"]["kernel"].spec == P("fsdp", "tensor")


# --- Multi-host: SLURM detection and the shared-workdir check (two real processes) -------------

_WORKER = """
import json, sys
import jax
from jax._src import distributed
from bertjax import sharding
assert sharding.initialize_distributed()  # no flags: the SLURM variables decide
out = {"count": jax.process_count(), "index": jax.process_index(),
       "coordinator": distributed.global_state.coordinator_address}
sharding.check_shared_workdir(sys.argv[1])  # the same directory for both
try:
    sharding.check_shared_workdir(sys.argv[2])  # a directory of its own
    out["own"] = "ok"
except sharding.WorkdirNotSharedError as e:
    out["own"] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_slurm_processes_find_their_coordinator_and_refuse_unshared_workdirs(tmp_path):
    """Two processes on 127.0.0.1 with the variables `srun --ntasks=2` sets: the multi-host
    initialisation takes the coordinator (first node of the step, port from the job id),
    the process count and each index from them. A workdir both see passes the check; a
    local directory of each process's own makes both stop with the one-line error."""
    import json
    import os
    import socket
    import subprocess
    import sys

    for port in range(65535 - 2**12 + 1, 65536):  # jax's SLURM port: job id % 4096 + 61440
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    job_id = 4096 * 7 + port - (65535 - 2**12 + 1)
    shared = str(tmp_path / "shared")
    os.makedirs(shared)
    procs = []
    for i in range(2):
        own = str(tmp_path / f"host{i}")
        os.makedirs(own)
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_PLATFORMS": "cpu",
            "SLURM_JOB_ID": str(job_id),
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(i),
            "SLURM_LOCALID": str(i),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, shared, own],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for i, r in enumerate(results):
        assert r["count"] == 2 and r["index"] == i
        assert r["coordinator"] == f"localhost:{port}"
        assert "must be shared storage" in r["own"] and len(r["own"].splitlines()) == 1
        assert "host" in r["own"] and "[1]" in r["own"]  # process 1 did not see the token
    assert os.listdir(shared) == []  # the token is removed
