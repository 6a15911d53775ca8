"""`bertjax <command>`: the only place that defines command-line flags.

Each command defines its own absl flags on a fresh `FlagValues`, so `bertjax CMD --help`
lists exactly that command's flags and `main()` can be called more than once in a process. Errors caused by the user's input (bad files, bad
values) are reported as one line naming the problem, with a non-zero exit status.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from absl import flags

USAGE = """usage: bertjax <command> [flags]

commands:
  convert    import a Hugging Face / Google TF1 BERT checkpoint, or export one
  features   write contextual token features (hidden states) of a checkpoint as JSON lines
  train      pre-train BERT (MLM + NSP) from an experiment config; resumes from --workdir
  smoke      build a tiny model, run one forward/backward step and print the loss

`bertjax <command> --help` lists a command's flags.
"""


def _define_convert(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum(
        "from", None, ["hf", "tf"], "Import from this format into bertjax.", flag_values=fv
    )
    flags.DEFINE_enum(
        "to", None, ["hf", "tf"], "Export a bertjax checkpoint to this format.", flag_values=fv
    )
    flags.DEFINE_string(
        "src", None, "Source checkpoint directory (or TF checkpoint prefix).", flag_values=fv
    )
    flags.DEFINE_string(
        "out", None, "Output directory (must be empty unless --overwrite).", flag_values=fv
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.", flag_values=fv)
    flags.DEFINE_bool(
        "skip_unknown", False, "Drop tensors that are not part of BERT (import).", flag_values=fv
    )
    flags.mark_flags_as_required(["src", "out"], flag_values=fv)


def _run_convert(fv: flags.FlagValues) -> None:
    from bertjax import convert

    src_kind, dst_kind = fv["from"].value, fv.to
    if (src_kind is None) == (dst_kind is None):
        raise UsageError("give exactly one of --from hf|tf (import) or --to hf|tf (export)")
    if src_kind:
        out = convert.convert_to_bertjax(
            src_kind, fv.src, fv.out, overwrite=fv.overwrite, skip_unknown=fv.skip_unknown
        )
    else:
        out = convert.convert_from_bertjax(dst_kind, fv.src, fv.out, overwrite=fv.overwrite)
    print(f"wrote {out}")


def _define_features(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "bertjax checkpoint directory.", flag_values=fv)
    flags.DEFINE_string(
        "input", None, "Text file: one sentence, or `text_a ||| text_b`, a line.", flag_values=fv
    )
    flags.DEFINE_string("output", None, "Output JSON-lines file.", flag_values=fv)
    flags.DEFINE_list(
        "layers", ["-1", "-2", "-3", "-4"], "Layers to write; -1 is the last.", flag_values=fv
    )
    flags.DEFINE_integer(
        "max_seq_length", 128, "Sequences are truncated to this many tokens.", flag_values=fv
    )
    flags.DEFINE_integer("batch_size", 32, "Sequences per forward pass.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output file.", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "input", "output"], flag_values=fv)


def _run_features(fv: flags.FlagValues) -> None:
    from bertjax.features import extract_features

    try:
        layers = [int(x) for x in fv.layers]
    except ValueError as e:
        raise UsageError(f"--layers={','.join(fv.layers)}: not a list of integers") from e
    n = extract_features(
        fv.checkpoint,
        fv.input,
        fv.output,
        layers=layers,
        max_seq_length=fv.max_seq_length,
        batch_size=fv.batch_size,
        overwrite=fv.overwrite,
    )
    print(f"wrote features of {n} lines to {fv.output}")


def _define_smoke(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("size", "tiny", "Model size from the size table.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "Sequences in the batch.", flag_values=fv)
    flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.", flag_values=fv)


def _run_smoke(fv: flags.FlagValues) -> None:
    import jax
    import numpy as np
    import optax

    from bertjax.config import model_config_for_size
    from bertjax.losses import pretraining_loss
    from bertjax.model import BertForPreTraining

    config = model_config_for_size(fv.size, vocab_size=1024)
    model = BertForPreTraining(config)
    rng = np.random.default_rng(0)
    b, t, p = fv.batch_size, fv.seq_len, max(1, fv.seq_len * 15 // 100)
    batch = {
        "input_ids": rng.integers(5, config.vocab_size, (b, t)).astype(np.int32),
        "input_mask": np.ones((b, t), np.int32),
        "segment_ids": (np.arange(t) >= t // 2).astype(np.int32)[None].repeat(b, 0),
        "masked_lm_positions": rng.integers(1, t, (b, p)).astype(np.int32),
        "masked_lm_ids": rng.integers(5, config.vocab_size, (b, p)).astype(np.int32),
        "masked_lm_weights": np.ones((b, p), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (b,)).astype(np.int32),
    }
    variables = model.init(jax.random.key(0), batch, train=False)
    params = variables["params"]

    @jax.jit
    def loss_and_grads(params, batch, key):
        def loss_fn(params):
            out = model.apply({"params": params}, batch, train=True, rngs={"dropout": key})
            return pretraining_loss(out["mlm_logits"], out["nsp_logits"], batch)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return metrics, optax.global_norm(grads)

    metrics, gnorm = loss_and_grads(params, batch, jax.random.key(1))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"model={fv.size} params={n_params:,} devices={jax.devices()}")
    print(
        f"loss={float(metrics['loss']):.4f} mlm_loss={float(metrics['mlm_loss']):.4f} "
        f"nsp_loss={float(metrics['nsp_loss']):.4f} grad_norm={float(gnorm):.4f}"
    )


def _define_train(fv: flags.FlagValues) -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, e.g. experiments/pretrain/bert_base.py:phase1; "
        "override fields with --config.train.batch_size=64.",
        flag_values=fv,
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Checkpoints, metrics and prepared data go here; a run "
        "started on a workdir with checkpoints resumes.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-host: host:port of process 0 (TPU pods and SLURM are detected without it).",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _run_train(fv: flags.FlagValues) -> None:
    from bertjax import sharding

    sharding.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    from bertjax import pretrain

    try:
        last = pretrain.train(fv.config, fv.workdir)
    except pretrain.Preempted as e:
        print(str(e))
        sys.exit(143)
    except pretrain.NonFiniteError as e:
        print(f"bertjax train: error: {e}", file=sys.stderr)
        sys.exit(1)
    if last:
        print("final: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))


COMMANDS: dict[
    str, tuple[Callable[[flags.FlagValues], None], Callable[[flags.FlagValues], None], str]
] = {
    "convert": (_define_convert, _run_convert, "import/export checkpoints"),
    "features": (_define_features, _run_features, "extract contextual features"),
    "train": (_define_train, _run_train, "pre-train BERT"),
    "smoke": (_define_smoke, _run_smoke, "one forward/backward step on a tiny model"),
}


class UsageError(ValueError):
    """Wrong combination of flags."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from bertjax.checkpoint import CheckpointError

    return (ValueError, FileNotFoundError, FileExistsError, CheckpointError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `bertjax` console script; exits with the command's status."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"bertjax: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    define, run, _ = COMMANDS[command]
    fv = flags.FlagValues()
    define(fv)
    if any(a in ("-h", "--help", "-help") for a in argv[2:]):
        print(f"usage: bertjax {command} [flags]\n\n{fv.get_help()}")
        sys.exit(0)
    try:
        fv([f"bertjax {command}", *argv[2:]])
    except flags.Error as e:
        print(f"bertjax {command}: {e}\n(see `bertjax {command} --help`)", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
    try:
        run(fv)
    except _user_errors() as e:
        print(f"bertjax {command}: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
