"""Where the time of a pre-training step goes, from a jax.profiler trace.

    python -m benchmarks.profile_step --size base --seq_len 128 --batch_size 8 \
        [--logdir /tmp/bertjax-profile] [--steps 3] [--top 15]

Builds the step of benchmarks/train_step.py (same flags), runs `--steps` steps under
`jax.profiler.trace` and reads the Perfetto trace it writes (`--logdir`; open it in
https://ui.perfetto.dev or TensorBoard's profile plugin for the timeline). Every XLA
operation event carries its HLO instruction name; the compiled HLO module maps that to
the JAX operation that produced it (`op_name`), from which this script derives:

* the phase: forward, backward (JAX's `transpose(jvp(...))`), optimizer, other;
* the kind: matmul (dot and oneDNN/XNNPACK fusions), dropout RNG, copy/transpose, other
  fused element-wise and reduction work;
* the module: the Flax module path with the layer number dropped
  (`encoder/layer/attention/self`, `cls/predictions`, ...).

Time is summed over the operations' events; on a CPU several threads run operations at
once, so the sums are shares of the work, not of the wall-clock step (printed as well).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import time

import jax

from benchmarks import train_step

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"")
_LAYER = re.compile(r"/layer_\d+")


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op_name of its metadata."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def classify(hlo_name: str, op_name: str) -> tuple[str, str, str]:
    """(phase, kind, module) of one HLO operation."""
    if "transpose(jvp(" in op_name:
        phase = "backward"
    elif "jvp(" in op_name:
        phase = "forward"
    else:  # AdamW, clipping, the guarded update, parameter copies
        phase = "optimizer"
    if "ynn_fusion" in hlo_name or "onednn" in hlo_name or hlo_name.startswith(("dot", "conv")):
        kind = "matmul"
    elif "Dropout" in op_name or "dropout" in op_name or "rng" in hlo_name:
        kind = "dropout / RNG"
    elif "copy" in hlo_name or "transpose" in hlo_name:
        kind = "copy / transpose"
    else:
        kind = "element-wise / reduce"
    parts = [
        part
        for part in op_name.split("/")[:-1]  # the last part is the primitive
        if part and not part.startswith(("jit(", "jvp(", "transpose(", "Dropout"))
    ]
    module = _LAYER.sub("/layer", "/".join(parts)) if "jvp(" in op_name else ""
    return phase, kind, module or "(outside the model)"


def read_trace(logdir: str) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {logdir}")
    with gzip.open(paths[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def main(argv=None) -> int:
    p = train_step.parser()
    p.description = __doc__.split("\n")[0]
    p.add_argument("--logdir", default="/tmp/bertjax-profile")
    p.add_argument("--top", type=int, default=15)
    args = train_step.parse_args(p, argv)
    compiled, state, batch, config, mesh, _ = train_step.build_step(args)
    for _ in range(max(1, args.warmup)):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    with jax.profiler.trace(args.logdir, create_perfetto_trace=True):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        wall = (time.perf_counter() - t0) / args.steps
    names = hlo_op_names(compiled.as_text())
    by = {key: collections.Counter() for key in ("phase", "kind", "module", "phase/kind", "op")}
    total = 0.0
    for event in read_trace(args.logdir):
        hlo = (event.get("args") or {}).get("hlo_op")
        if event.get("ph") != "X" or not hlo:
            continue
        seconds = event.get("dur", 0.0) * 1e-6 / args.steps
        phase, kind, module = classify(hlo, names.get(hlo, ""))
        total += seconds
        by["phase"][phase] += seconds
        by["kind"][kind] += seconds
        by["module"][module] += seconds
        by["phase/kind"][f"{phase:9s} {kind}"] += seconds
        by["op"][f"{hlo} ({names.get(hlo, '?')})"] += seconds
    if total == 0:
        print("the trace holds no XLA operation events")
        return 1
    print(
        f"bert-{args.size}, seq {args.seq_len}, batch {args.batch_size}, {args.dtype}: "
        f"{wall:.3f} s per step wall-clock, {total:.3f} s of operation time per step "
        f"({jax.default_backend()}, trace in {args.logdir})"
    )
    for key, top in (("phase", 10), ("kind", 10), ("phase/kind", 20), ("module", args.top)):
        print(f"\nby {key}:")
        for name, sec in by[key].most_common(top):
            print(f"  {sec:8.3f} s {sec / total:6.1%}  {name}")
    print(f"\ntop {args.top} operations:")
    for name, sec in by["op"].most_common(args.top):
        print(f"  {sec:8.3f} s {sec / total:6.1%}  {name[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
