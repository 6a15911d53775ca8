"""Checkpoints on disk: self-describing model directories (Orbax).

A bertjax model directory carries everything a command needs, so each takes just
`--checkpoint DIR`:

    DIR/bertjax_config.json   {"format": "bertjax", "version": 1, "model": {ModelConfig},
                               "heads": ["pooler", "classifier"], "source": "...",
                               "task": {"name": "mnli", "kind": "classification",
                                        "labels": ["entailment", "neutral", "contradiction"]}}
    DIR/params/               Orbax checkpoint of the parameter tree (plain nested dict)
    DIR/vocab.txt | spm.model the tokenizer, with DIR/tokenizer_config.json

A directory is written under a temporary name and renamed when complete, so a crash
never leaves something that looks like a checkpoint; an existing checkpoint is only
replaced when the caller asks to overwrite it.

"heads" lists the optional parts the parameters hold (`head_groups`). "task" is present when
they hold a downstream head (classifier or qa_outputs): what the head's outputs mean, so that
an export can say it (`check_task` gives the rules). A fine-tuning run records the task it
trained; an imported checkpoint the one its config names; otherwise it is inferred from the
parameters (`infer_task`), with labels null.

Model directories always hold the canonical layer_0, layer_1, ... layout (their config
says scan_layers=False): parameters of a run with `scan_layers` are unstacked when saved,
and a pre-training workdir's stacked checkpoints when read as a model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bertjax import storage
from bertjax.config import CONFIG_FILE, ModelConfig, read_json

PARAMS_DIR = "params"
FORMAT_VERSION = 1
HEAD_GROUPS = ("pooler", "mlm", "nsp")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked; the message names file and problem."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """A workdir that holds no finished checkpoint (a run stopped before its first save):
    a CheckpointError, and the FileNotFoundError of "a path that holds no checkpoint"."""


class _NoItemMetadataWarning(logging.Filter):
    """Drops Orbax's "Metadata file does not exist: .../<step>/state/_CHECKPOINT_METADATA":
    a pre-training step's `state` item is read on its own, and the step's metadata file sits
    one level up, beside it, as CheckpointManager writes it. Nothing is missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Metadata file does not exist")
            and message.endswith("_CHECKPOINT_METADATA")
        )


# Orbax logs through absl, whose records go to the "absl" logger itself.
logging.getLogger("absl").addFilter(_NoItemMetadataWarning())


def is_model_dir(path: str) -> bool:
    return storage.isfile(storage.join(path, CONFIG_FILE)) and storage.isdir(
        storage.join(path, PARAMS_DIR)
    )


def holds_checkpoint(path: str) -> bool:
    """Whether `path` already holds a bertjax model directory or foreign model files."""
    return storage.holds_files(path)


def write_atomically(out_dir: str, write: Callable[[str], None], *, overwrite: bool) -> str:
    """Calls write(tmp_dir), then publishes tmp_dir as out_dir (`storage.publish_dir`: a
    rename locally; into a bucket an upload with bertjax_config.json, the marker of a
    complete model directory, last).

    Refuses a non-empty out_dir unless overwrite; with overwrite, the old directory is
    only removed after the new one is complete.
    """
    return storage.publish_dir(
        out_dir,
        write,
        overwrite=overwrite,
        marker=CONFIG_FILE,
        exists_error=lambda out: CheckpointError(
            f"{out}: output directory is not empty; pass --overwrite to replace it"
        ),
    )


def check_output_spares(out: str, *inputs: str) -> None:
    """Raises CheckpointError when writing `out` (which --overwrite replaces whole) would
    replace or remove one of `inputs`: the same directory, or one that contains an input."""

    def real(p: str) -> str:
        return storage.abspath(p).rstrip("/") if storage.is_remote(p) else os.path.realpath(p)

    out_real = real(out)
    for path in inputs:
        real_in = real(path)
        if real_in == out_real or real_in.startswith(out_real.rstrip(os.sep) + os.sep):
            raise CheckpointError(
                f"{out}: the output would replace the input {path}; choose another output"
            )


def _unbox(tree: Any) -> Any:
    import flax.linen as nn

    return nn.meta.unbox(tree)


def save_params(path: str, params: Any) -> None:
    """Writes a parameter tree with Orbax (blocking)."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(storage.abspath(path), _unbox(params))
    ckptr.wait_until_finished()


def restore_params(path: str, target: Any | None = None) -> Any:
    """Restores a parameter tree; `target` (arrays or ShapeDtypeStructs with shardings)
    places it directly on devices, otherwise it is restored as host numpy arrays."""
    path = storage.abspath(path)
    if not storage.isdir(path):
        raise CheckpointError(f"{path}: parameter checkpoint not found")
    ckptr = ocp.StandardCheckpointer()
    try:
        if target is None:
            meta = ckptr.metadata(path)
            tree = getattr(meta, "item_metadata", meta)
            tree = getattr(tree, "tree", tree)
            target = jax.tree_util.tree_map(
                lambda m: np.zeros(m.shape, m.dtype),
                tree,
                is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
            )
            restored = ckptr.restore(path, target)
            return jax.tree_util.tree_map(np.asarray, restored)
        return ckptr.restore(path, target)
    except Exception as e:  # damaged or foreign files surface as many exception types
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"{path}: parameter checkpoint cannot be read ({type(e).__name__}: {first})"
        ) from e


def head_groups(params: dict[str, Any]) -> list[str]:
    """Which optional parts a parameter tree holds: the pooler, the mlm and nsp heads, and
    the downstream heads `classifier` (sequence or token classification, regression) and
    `qa_outputs` (span prediction)."""
    groups = []
    if "pooler" in params.get("bert", {}):
        groups.append("pooler")
    cls = params.get("cls", {})
    if "predictions" in cls:
        groups.append("mlm")
    if "seq_relationship" in cls:
        groups.append("nsp")
    groups += [head for head in DOWNSTREAM_HEADS if head in params]
    return groups


# --- What a downstream head's outputs mean ------------------------------------------------------

DOWNSTREAM_HEADS = ("classifier", "qa_outputs")
# Task kind -> the head it uses. Sequence kinds read the pooled [CLS] vector
# (model.BertForSequenceClassification); token_classification and span read every token.
TASK_KINDS = {
    "classification": "classifier",  # softmax over the labels
    "multi_label_classification": "classifier",  # one sigmoid per label
    "regression": "classifier",  # one output (STS-B)
    "token_classification": "classifier",  # a label per token (model.BertForTokenClassification)
    "span": "qa_outputs",  # start and end logits per token (model.BertForQuestionAnswering)
}
_TASK_KEYS = ("name", "kind", "labels", "tagger")  # tagger: a feature-based NER head (ner.py)


def head_outputs(params: dict[str, Any], head: str) -> int | None:
    """Outputs of a downstream head (its bias length), None when `params` lack it."""
    bias = params.get(head, {}).get("bias")
    return None if bias is None else int(np.shape(bias)[-1])


def check_task(task: Any, params: dict[str, Any], *, where: str) -> dict[str, Any]:
    """The normalised task metadata {"name", "kind", "labels"} of a model directory.

    `task` is a mapping with `kind` (one of TASK_KINDS), optional `name` (the task's name,
    e.g. "mnli"; "" when unknown) and optional `labels`: the class names in class-id order,
    one per output of the head, unique, or null (names default to LABEL_0, LABEL_1, ...).
    The head the kind uses must be in `params` with a fitting number of outputs: 1 for
    regression, 2 for span, at least 2 for classification; sequence kinds also need the
    pooler. Raises CheckpointError naming `where` and the offending key and value.
    """
    if not isinstance(task, dict):
        raise CheckpointError(f"{where}: 'task' must be an object, got {task!r}")
    unknown = sorted(set(task) - set(_TASK_KEYS))
    if unknown:
        raise CheckpointError(f"{where}: task has unknown keys {unknown}; known {_TASK_KEYS}")
    kind, name, labels = task.get("kind"), task.get("name", ""), task.get("labels")
    if kind not in TASK_KINDS:
        raise CheckpointError(f"{where}: task.kind={kind!r} is not one of {sorted(TASK_KINDS)}")
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: task.name={name!r} must be a string")
    head = TASK_KINDS[kind]
    n = head_outputs(params, head)
    if n is None:
        raise CheckpointError(
            f"{where}: task.kind={kind!r} needs the {head} head, which the parameters lack "
            f"(they hold {head_groups(params)})"
        )
    fits, wanted = {
        "regression": (n == 1, "1 output"),
        "span": (n == 2, "2 outputs"),
    }.get(kind, (n >= 2, "2 or more outputs"))
    if not fits:
        raise CheckpointError(
            f"{where}: task.kind={kind!r} needs a {head} head with {wanted}; it has {n}"
        )
    if kind in ("classification", "multi_label_classification", "regression") and (
        "pooler" not in params.get("bert", {})
    ):
        raise CheckpointError(f"{where}: task.kind={kind!r} reads the pooler, which is missing")
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or not all(
            isinstance(x, str) and x for x in labels
        ):
            raise CheckpointError(
                f"{where}: task.labels={labels!r} must be a list of non-empty strings or null"
            )
        if len(labels) != n:
            raise CheckpointError(
                f"{where}: task.labels has {len(labels)} names but the {head} head has {n} outputs"
            )
        if len(set(labels)) != len(labels):
            raise CheckpointError(f"{where}: task.labels={list(labels)} has duplicate names")
        labels = list(labels)
    tagger = task.get("tagger")
    if tagger is not None and (kind != "token_classification" or not isinstance(tagger, dict)):
        raise CheckpointError(
            f"{where}: task.tagger={tagger!r} must be an object, on a token_classification task"
        )
    out = {"name": name, "kind": kind, "labels": labels}
    return {**out, "tagger": dict(tagger)} if tagger is not None else out


def infer_task(params: dict[str, Any]) -> dict[str, Any] | None:
    """The task metadata a parameter tree implies when nothing names it, or None without a
    downstream head: qa_outputs -> span; a classifier with the pooler -> classification
    (regression for one output), without it -> token_classification. Labels are null."""
    if "qa_outputs" in params:
        kind = "span"
    elif "classifier" in params:
        if "pooler" not in params.get("bert", {}):
            kind = "token_classification"
        else:
            kind = "regression" if head_outputs(params, "classifier") == 1 else "classification"
    else:
        return None
    return {"name": "", "kind": kind, "labels": None}


def canonical(params: dict[str, Any], config: ModelConfig) -> tuple[dict[str, Any], ModelConfig]:
    """(params in the canonical unscanned layout, the config describing them); `config`
    gives the layout `params` are in."""
    if not config.scan_layers:
        return params, config
    from bertjax.model import unstack_layers

    return unstack_layers(params, config.num_layers), config.replace(scan_layers=False)


def save_model_dir(
    out_dir: str,
    params: dict[str, Any],
    config: ModelConfig,
    *,
    tokenizer: Any | None = None,
    source: str = "",
    task: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a complete bertjax model directory atomically; returns its absolute path.

    `params` are in the layout of `config`; the directory gets the canonical one. `task`
    says what a downstream head's outputs mean ({"name", "kind", "labels"}, see
    `check_task`, which raises CheckpointError when it does not fit the parameters); without
    it, a head's task is inferred (`infer_task`) and recorded with labels null.
    """
    params, config = canonical(_unbox(params), config)
    where = storage.join(out_dir, CONFIG_FILE)
    task = infer_task(params) if task is None else check_task(task, params, where=where)

    def write(tmp: str) -> None:
        save_params(storage.join(tmp, PARAMS_DIR), params)
        meta = {
            "format": "bertjax",
            "version": FORMAT_VERSION,
            "model": config.to_dict(),
            "heads": head_groups(params),
            "source": source,
        }
        if task is not None:
            meta["task"] = task
        storage.write_json(storage.join(tmp, CONFIG_FILE), meta)
        if tokenizer is not None:
            tokenizer.save(tmp)

    return write_atomically(out_dir, write, overwrite=overwrite)


def load_model_config(path: str) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig and metadata of a model directory."""
    cfg_path = storage.join(path, CONFIG_FILE)
    if not storage.exists(path):
        raise NoCheckpointError(f"{path}: no such file or directory")
    if not storage.isfile(cfg_path):
        raise CheckpointError(
            f"{path}: not a bertjax checkpoint ({CONFIG_FILE} missing); import foreign "
            "checkpoints first with `bertjax convert --from hf|tf`"
        )
    meta = read_json(cfg_path)
    if meta.get("format") != "bertjax":
        raise CheckpointError(f"{cfg_path}: 'format' is {meta.get('format')!r}, not 'bertjax'")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format version {meta.get('version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: key 'model' missing or not an object")
    config = ModelConfig.from_dict(meta["model"], source=f"{cfg_path}: model")
    return config, meta


def load_model_dir(path: str) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """(config, params as numpy, metadata) of a model directory or a pre-training workdir
    (its newest checkpoint); the params are in the canonical layout (scan_layers=False)."""
    config, meta = load_model_config(path)
    if storage.isdir(storage.join(path, PARAMS_DIR)):
        params = restore_params(storage.join(path, PARAMS_DIR))
    elif storage.isdir(storage.join(path, CHECKPOINTS_DIR)):
        step, params = restore_workdir_params(path)
        meta = {**meta, "step": step}
    else:
        raise CheckpointError(f"{path}: neither {PARAMS_DIR}/ nor {CHECKPOINTS_DIR}/ found")
    params, config = canonical(params, config)
    return config, params, meta


def has_tokenizer(path: str) -> bool:
    """Whether a checkpoint directory holds a tokenizer model file (vocab.txt or *.model)."""
    return storage.isfile(storage.join(path, "vocab.txt")) or any(
        n.endswith(".model") for n in storage.listdir(path)
    )


def load_tokenizer_from(path: str):
    """The tokenizer stored in a model directory, with an error naming the directory.

    Only the tokenizer is read; callers that also hold the model use
    `load_model_and_tokenizer` (or `check_vocab_fits`), so every id it can produce has an
    embedding row.
    """
    from data_pipelines.tokenizers import load_tokenizer

    try:
        return load_tokenizer(path)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{path}: no usable tokenizer in the checkpoint ({e})") from e


# --- Token ids against the embedding tables ------------------------------------------------------
#
# The one rule for every command that feeds a tokenizer's ids to a model: each id needs a row in
# the word-embedding table. JAX's gather does not fail on an out-of-range index (on CPU/GPU it
# returns NaN-filled rows under `jnp.take`'s default mode), so a vocab.txt with more lines than
# the checkpoint has rows would silently turn every vector of a sequence holding one of the extra
# tokens into NaN; transformers raises an IndexError there instead. A table with more rows than
# the vocab has entries is valid (vocabularies padded to a multiple of 8 or 128, unused rows).


class VocabMismatchError(CheckpointError):
    """A tokenizer whose ids do not all have a row in the model's word-embedding table."""


def tokenizer_file(tokenizer: Any) -> str:
    """The vocab.txt / SentencePiece model file a tokenizer was read from ('' if unknown)."""
    return str(getattr(tokenizer, "vocab_file", "") or getattr(tokenizer, "model_file", ""))


def check_vocab_fits(
    vocab_size: int, embedding_rows: int, *, vocab_source: str, model_source: str
) -> None:
    """Raises VocabMismatchError unless every id in [0, vocab_size) has an embedding row.

    Args:
      vocab_size: number of tokens of the tokenizer (ids 0 .. vocab_size - 1).
      embedding_rows: rows of the word-embedding table (`ModelConfig.vocab_size`).
      vocab_source: the file (or dataset) the vocab comes from, named in the error.
      model_source: the checkpoint / config the table comes from, named in the error.
    """
    if vocab_size > embedding_rows:
        raise VocabMismatchError(
            f"{vocab_source}: the vocab has {vocab_size} tokens but {model_source} has only "
            f"{embedding_rows} word-embedding rows (ids {embedding_rows}..{vocab_size - 1} "
            "have no embedding); use the vocab the model was trained with"
        )


def check_tokenizer_fits(tokenizer: Any, config: ModelConfig, *, model_source: str) -> None:
    """`check_vocab_fits` for a tokenizer object and a model config."""
    check_vocab_fits(
        tokenizer.vocab_size,
        config.vocab_size,
        vocab_source=tokenizer_file(tokenizer) or "the tokenizer",
        model_source=model_source,
    )


def check_same_tokenizer(a: Any, b: Any, *, a_source: str, b_source: str) -> None:
    """Raises VocabMismatchError unless two tokenizers give every text the same ids: same kind,
    same pieces under the same ids, same lowercasing. Used where ids made by one tokenizer
    (prepared data) meet embedding rows learned with another (an init checkpoint): a smaller
    but different vocab fits the table and would silently look up the wrong rows."""
    if a.kind != b.kind or a.vocab_size != b.vocab_size:
        raise VocabMismatchError(
            f"{a_source}: a {a.vocab_size}-token {a.kind} vocab, but {b_source} was trained with "
            f"a {b.vocab_size}-token {b.kind} vocab; the ids would point at the wrong embedding "
            "rows (prepare the data with the checkpoint's vocab)"
        )
    ids = range(a.vocab_size)
    pieces_a, pieces_b = a.convert_ids_to_tokens(ids), b.convert_ids_to_tokens(ids)
    if pieces_a != pieces_b:
        i = next(i for i, (x, y) in enumerate(zip(pieces_a, pieces_b, strict=True)) if x != y)
        raise VocabMismatchError(
            f"{a_source}: id {i} is {pieces_a[i]!r} but {pieces_b[i]!r} in {b_source}; the ids "
            "would point at the wrong embedding rows (prepare the data with the checkpoint's vocab)"
        )
    if a.do_lower_case != b.do_lower_case:
        raise VocabMismatchError(
            f"{a_source}: do_lower_case={a.do_lower_case} but {b_source} has "
            f"do_lower_case={b.do_lower_case}"
        )


def check_sequence_fits(
    config: ModelConfig, *, max_seq_length: int, num_segments: int, what: str, model_source: str
) -> None:
    """Raises CheckpointError unless sequences of `max_seq_length` tokens and `num_segments`
    segments (1 for single texts, 2 for pairs) have position and token-type embedding rows.

    `what` names the setting that asks for the length (e.g. "--max_seq_length=512").
    """
    if max_seq_length > config.max_position_embeddings:
        raise CheckpointError(
            f"{what} exceeds the max_position_embeddings={config.max_position_embeddings} of "
            f"{model_source}"
        )
    if num_segments > config.type_vocab_size:
        raise CheckpointError(
            f"{model_source}: type_vocab_size={config.type_vocab_size} cannot embed the "
            f"{num_segments} segments of a sentence pair (segment ids 0..{num_segments - 1})"
        )


def load_model_and_tokenizer(path: str) -> tuple[ModelConfig, dict[str, Any], dict[str, Any], Any]:
    """(config, params, metadata, tokenizer) of a model directory or pre-training workdir,
    checked so that every token id has an embedding row (VocabMismatchError otherwise)."""
    config, params, meta = load_model_dir(path)
    tokenizer = load_tokenizer_from(path)
    check_tokenizer_fits(tokenizer, config, model_source=storage.join(path, CONFIG_FILE))
    return config, params, meta, tokenizer


def load_checked_tokenizer(path: str, *, do_lower_case: bool | None = None) -> Any:
    """A tokenizer from a vocab file or directory (`data_pipelines.tokenizers.load_tokenizer`);
    when `path` is a bertjax checkpoint, its ids are checked against the checkpoint's
    embedding table as well."""
    from data_pipelines.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(path, do_lower_case=do_lower_case)
    if storage.isfile(storage.join(path, CONFIG_FILE)):
        config, _ = load_model_config(path)
        check_tokenizer_fits(tokenizer, config, model_source=storage.join(path, CONFIG_FILE))
    return tokenizer


def merge_params(
    fresh: dict[str, Any], loaded: dict[str, Any], *, source: str
) -> tuple[dict[str, Any], list[str]]:
    """Overlays loaded parameters on freshly initialised ones.

    Every loaded tensor must exist in `fresh` with the same shape; parameters the
    checkpoint lacks (e.g. a new classifier head) keep their fresh values and are
    returned by name.
    """
    flat_fresh = flatten_params(_unbox(fresh))
    flat_loaded = flatten_params(loaded)
    extra = sorted(set(flat_loaded) - set(flat_fresh))
    if extra:
        raise CheckpointError(f"{source}: tensors not in the model: {extra[:10]}")
    mismatched = [
        f"{k}: checkpoint {tuple(np.shape(v))} vs model {tuple(np.shape(flat_fresh[k]))}"
        for k, v in flat_loaded.items()
        if tuple(np.shape(v)) != tuple(np.shape(flat_fresh[k]))
    ]
    if mismatched:
        raise CheckpointError(f"{source}: shape mismatch: {mismatched[:10]}")
    fresh_only = sorted(set(flat_fresh) - set(flat_loaded))
    merged = {k: flat_loaded.get(k, v) for k, v in flat_fresh.items()}
    return unflatten_params(merged), fresh_only


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_params(v, name))
        else:
            out[name] = v
    return out


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


# --- Training checkpoints (a pre-training workdir) ----------------------------------------------
#
#   WORKDIR/bertjax_config.json   as in a model directory (model config), plus the run config
#   WORKDIR/vocab.txt ...         the tokenizer the data was made with
#   WORKDIR/checkpoints/<step>/{state, data, config}   Orbax CheckpointManager steps

CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG_FILE = "run_config.json"


def is_workdir(path: str) -> bool:
    return storage.isdir(storage.join(path, CHECKPOINTS_DIR)) and storage.isfile(
        storage.join(path, CONFIG_FILE)
    )


class TrainCheckpointer:
    """Orbax CheckpointManager for the train state and the data iterator.

    Saves asynchronously every call (the caller decides the period), keeps the newest
    `keep`, and on restore falls back to older steps when the newest cannot be read
    (Orbax only ever exposes finished steps; a step whose files were damaged later fails
    to restore and is reported).
    """

    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.directory = storage.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> None:
        import grain

        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        )
        self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, target: Any, make_iterator: Any) -> tuple[Any | None, Any]:
        """(newest readable state or None, data iterator positioned to match it).

        The state is restored first and the iterator second, so a damaged step never leaves
        a half-restored pair. With no checkpoint the iterator is a fresh one; when there are
        checkpoints but none can be restored, CheckpointError is raised rather than starting
        over in a directory whose checkpoints would then be replaced.
        """
        import grain

        log = logging.getLogger(__name__)
        failures = []
        for step in reversed(self.steps()):
            iterator = make_iterator()
            try:
                state = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
                )["state"]
                self.manager.restore(
                    step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator))
                )
            except Exception as e:  # damaged files surface as many exception types
                # The first line only: Orbax/TensorStore messages carry kilobytes of spec JSON.
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                log.error(
                    "%s/%d: checkpoint cannot be restored (%s); trying an older one",
                    self.directory,
                    step,
                    reason,
                )
                failures.append(f"{step} ({reason})")
                continue
            return state, iterator
        if failures:
            raise CheckpointError(
                f"{self.directory}: none of the checkpoints can be restored (steps "
                f"{'; '.join(failures)}); they may come from another version of bertjax or another "
                "config. Nothing was changed: use another --workdir, or move the checkpoints away"
            )
        return None, make_iterator()

    def close(self) -> None:
        self.manager.close()


def check_workdir_model(workdir: str, config: ModelConfig) -> None:
    """Refuses a workdir whose checkpoints hold a model of another shape."""
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.isfile(path):
        return
    existing, _ = load_model_config(workdir)
    diff = existing.shape_differences(config)
    if diff:
        raise CheckpointError(
            f"{workdir}: holds checkpoints of a different model (workdir, config): {diff}; "
            "use another --workdir"
        )
    checkpoints = storage.join(workdir, CHECKPOINTS_DIR)
    has_steps = storage.isdir(checkpoints) and bool(storage.listdir(checkpoints))
    if has_steps and existing.scan_layers != config.scan_layers:
        raise CheckpointError(
            f"{workdir}: its checkpoints hold scan_layers={existing.scan_layers} parameters but "
            f"config.model.scan_layers={config.scan_layers}; resume with the same setting, or "
            "start another --workdir with config.init_checkpoint pointing here"
        )


def write_workdir_files(workdir: str, cfg: Any, config_dict: Any, tokenizer_path: str) -> None:
    """Model config, resolved run config and tokenizer beside the checkpoints (process 0)."""
    if jax.process_index() != 0:
        return
    meta = {
        "format": "bertjax",
        "version": FORMAT_VERSION,
        "model": cfg.model.to_dict(),
        "heads": list(HEAD_GROUPS),
        "source": "pretrain",
    }
    storage.write_json(storage.join(workdir, CONFIG_FILE), meta)
    storage.write_json(storage.join(workdir, RUN_CONFIG_FILE), json.loads(config_dict.to_json()))
    if tokenizer_path and not storage.isfile(storage.join(workdir, "tokenizer_config.json")):
        from data_pipelines.tokenizers import load_tokenizer

        load_tokenizer(tokenizer_path).save(workdir)


def restore_workdir_params(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, params as numpy) of a pre-training workdir's newest (or given) checkpoint, in
    the canonical layout (unstacked when the workdir's config has scan_layers)."""
    directory = storage.join(storage.abspath(workdir), CHECKPOINTS_DIR)
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    steps = sorted(manager.all_steps())
    if not steps:
        raise NoCheckpointError(f"{directory}: no finished checkpoints")
    step = steps[-1] if step is None else step
    path = storage.join(directory, str(step), "state")
    meta = ocp.StandardCheckpointer().metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    restored = ocp.StandardCheckpointer().restore(path, _zeros_like_meta(tree))
    manager.close()
    params = jax.tree_util.tree_map(np.asarray, restored["params"])
    if storage.isfile(storage.join(workdir, CONFIG_FILE)):
        params, _ = canonical(params, load_model_config(workdir)[0])
    return step, params


def _zeros_like_meta(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda m: np.zeros(m.shape, m.dtype),
        tree,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
    )


def load_into_sharded(
    params: Any, loaded: dict[str, Any], params_sharding: Any, *, source: str
) -> tuple[Any, list[str]]:
    """Overlays `loaded` (host arrays) on sharded `params`: (new sharded params, names the
    checkpoint lacked and that keep their fresh values). Works across processes: the fresh
    values are gathered replicated first, so every process holds the whole tree."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.tree_util.tree_leaves(params_sharding)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    gather = jax.jit(
        lambda p: p, out_shardings=jax.tree_util.tree_map(lambda _: replicated, params_sharding)
    )
    host = jax.device_get(gather(params))
    merged, fresh = merge_params(host, loaded, source=source)
    merged = jax.tree_util.tree_map(lambda x, ref: np.asarray(x, ref.dtype), merged, host)
    return jax.device_put(merged, params_sharding), fresh
