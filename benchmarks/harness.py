"""Timing shared by the step benchmarks: interleaved rounds, medians, a peak per round.

A CPU shared with other virtual machines changes speed by 10% or more from one minute to
the next, so timing one system and then the other compares two moments as much as two
systems. `interleaved` runs the systems in turns (round 1: A then B, round 2: A then B,
...), each turn timing `steps` steps, and reports each system's median turn. On a CPU
the matmul peak is measured in every round as well and the highest is kept, so the MFU
it gives is a lower bound.

Each turn starts with one untimed step. The first step after the other system's turn
pays for that turn's memory churn: on this development machine (a virtual machine that
hands freed memory back to its host), bertjax's first fine-tuning step at batch 32 after
a transformers turn took 18.8–20.5 s against 11.2–11.6 s for the next one, its threads
spending 34 s of CPU time instead of 21 s on the same work, with no page faults to show
for it. Whichever system runs second in a round would be charged for the other.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import jax

from bertjax import flops


def jax_runner(compiled: Callable, state, batch) -> tuple[Callable[[int], float], dict]:
    """A runner for a compiled (donating) step `compiled(state, batch) -> (state, metrics)`;
    the dict it returns holds the latest metrics."""
    holder = {"state": state, "metrics": None}

    def run(steps: int) -> float:
        s = holder["state"]
        t0 = time.perf_counter()
        for _ in range(steps):
            s, m = compiled(s, batch)
        jax.block_until_ready((s, m))
        holder["state"], holder["metrics"] = s, m
        return time.perf_counter() - t0

    return run, holder


def jax_setup(
    args,
    compiled: Callable,
    state,
    batch,
    *,
    mesh,
    compile_seconds: float,
    model_flops: float,
    **extra,
) -> tuple[Callable[[int], float], Callable[[float, float, str], dict]]:
    """(runner, finish) of a compiled bertjax step: the runner times steps (`jax_runner`);
    finish(step_seconds, peak, peak_source) gives the result fields (`jax_result`, with
    `extra`)."""
    run, holder = jax_runner(compiled, state, batch)

    def finish(step_s: float, peak: float, peak_source: str) -> dict:
        return jax_result(
            args,
            mesh=mesh,
            compile_seconds=compile_seconds,
            model_flops=model_flops,
            metrics=holder["metrics"],
            step_seconds=step_s,
            peak=peak,
            peak_source=peak_source,
            **extra,
        )

    return run, finish


def torch_runner(step: Callable[[], object], device: str) -> Callable[[int], float]:
    """A runner for a PyTorch training step function (synchronised on CUDA)."""
    import torch

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def interleaved(
    runners: dict[str, Callable[[int], float]], *, warmup: int, steps: int, rounds: int
) -> tuple[dict[str, float], float, str]:
    """Median seconds per step of each runner, and (peak FLOP/s, its source) per device."""
    for run in runners.values():
        if warmup:
            run(warmup)
    per_round: dict[str, list[float]] = {name: [] for name in runners}
    on_cpu = jax.devices()[0].platform == "cpu"
    peaks = []
    for _ in range(rounds):
        if on_cpu:
            peaks.append(flops.measured_cpu_peak_flops())
        for name, run in runners.items():
            run(1)  # untimed: the first step after the other system's turn (module doc)
            per_round[name].append(run(steps) / steps)
    if on_cpu:
        peak, source = max(peaks), f"measured fp32 matmul on this CPU (best of {rounds} rounds)"
    else:
        peak, source = flops.peak_flops_per_device()
    return {name: statistics.median(v) for name, v in per_round.items()}, peak, source


def peak_memory_bytes() -> int:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: process peak RSS


def jax_result(
    args,
    *,
    mesh,
    compile_seconds: float,
    model_flops: float,
    metrics,
    step_seconds: float,
    peak: float,
    peak_source: str,
    **extra,
) -> dict:
    """The figures of a timed bertjax step (`args`: size, seq_len, batch_size, dtype)."""
    total_peak = peak if jax.devices()[0].platform == "cpu" else peak * mesh.devices.size
    return {
        "size": args.size,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        **extra,
        "dtype": args.dtype,
        "devices": mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "step_seconds": step_seconds,
        "tokens_per_sec": args.batch_size * args.seq_len / step_seconds,
        "sequences_per_sec": args.batch_size / step_seconds,
        "compile_seconds": compile_seconds,
        "peak_memory_bytes": peak_memory_bytes(),
        "model_flops_per_step": model_flops,
        "peak_flops": total_peak,
        "peak_flops_source": peak_source,
        "mfu": model_flops / step_seconds / total_peak,
        "loss": float(metrics["loss"]),
    }


def compare(args, setup_bertjax: Callable, setup_peer: Callable) -> dict:
    """Times bertjax (and with `args.peer` the peer) in turns; prints and returns the figures.

    setup_bertjax(args) -> (runner, finish(step_seconds, peak, source) -> dict);
    setup_peer(args) -> (runner, info dict).
    """
    import json

    run, finish = setup_bertjax(args)
    runners = {"bertjax": run}
    if args.peer:
        runners["peer"], peer_info = setup_peer(args)
    seconds, peak, source = interleaved(
        runners, warmup=args.warmup, steps=args.steps, rounds=args.rounds
    )
    result = finish(seconds["bertjax"], peak, source)
    result["rounds"] = args.rounds
    if args.peer:
        result.update(peer_info)
        result["peer_step_seconds"] = seconds["peer"]
        result["peer_tokens_per_sec"] = args.batch_size * args.seq_len / seconds["peer"]
        result["ratio"] = result["tokens_per_sec"] / result["peer_tokens_per_sec"]
    for k, v in result.items():
        print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
    if args.json:
        print(json.dumps(result))
    return result


def hf_bert(model_class: str, size: str, *, learning_rate: float, **config):
    """(model in train mode, AdamW, device) for a transformers BERT class of a size from
    bertjax's size table; `config` adds BertConfig fields (dropout, labels, ...)."""
    import torch
    import transformers

    from bertjax.config import MODEL_SIZES

    torch.manual_seed(0)
    layers, hidden, heads, mlp = MODEL_SIZES[size]
    hf_cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        **config,
    )
    model = getattr(transformers, model_class)(hf_cfg).train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, eps=1e-6)
    return model, optimizer, device


def torch_peer(model, optimizer, inputs: dict, *, device: str, bf16: bool):
    """(runner, info) for a transformers model's training step: forward (under autocast
    with `bf16`), backward, global-norm clipping at 1.0 and the optimizer step."""
    import torch
    import transformers

    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)
    info = {
        "peer": f"transformers {transformers.__version__} / torch {torch.__version__} "
        f"({device}, {torch.get_num_threads()} threads)"
    }

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        info["peer_loss"] = loss.item()

    return torch_runner(step, device), info
