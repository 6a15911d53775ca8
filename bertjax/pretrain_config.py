"""The resolved pre-training experiment: what `pretrain.train` receives.

An experiment file (experiments/pretrain/*.py) describes a run with an `ml_collections`
ConfigDict whose groups are built from these dataclasses (`config.config_dict_from`): each
field's default and its one-line comment live here, once, and the experiment files state only
what they change. `PretrainConfig.from_config_dict` validates the ConfigDict (an unknown or
misspelt key is an error naming it) before any data is prepared or any program compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bertjax.config import (
    ModelConfig,
    PretrainEvalConfig,
    check_config_kind,
    from_group,
    model_config_from_config_dict,
)
from bertjax.optim import OptimConfig
from bertjax.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where pre-training examples come from: prepared shards, or text prepared into
    WORKDIR/data (data_pipelines/prepare.py)."""

    train_dir: str = ""  # shards written by `bertjax prepare`; '' = prepare data.corpus
    eval_dir: str = ""  # held-out shards for evaluation; '' = none (or the prepared split)
    corpus: str = ""  # text to prepare into WORKDIR/data: 'embedded' or a glob of BERT text
    vocab: str = ""  # vocab.txt / SentencePiece model / checkpoint dir; '' = train one
    vocab_size: int = 8192  # size of a vocab trained on data.corpus
    do_lower_case: bool = True  # uncased model
    max_seq_length: int = 128  # tokens per example (phase 1: 128, phase 2: 512)
    max_predictions_per_seq: int = 20  # masked positions per example (20 at 128, 80 at 512)
    masked_lm_prob: float = 0.15  # share of tokens masked
    dupe_factor: int = 5  # passes over the corpus with different masks
    short_seq_prob: float = 0.1  # share of examples with a shorter target length
    do_whole_word_mask: bool = False  # mask all pieces of a word together
    dynamic_masking: bool = False  # mask on the fly with a per-epoch seed (RoBERTa)
    eval_fraction: float = 0.02  # share of documents held out when preparing data.corpus
    num_workers: int = 0  # grain worker processes (0 = in the training process)
    packing: bool = False  # pack several sentence pairs per row, NSP kept per pair
    max_sequences_per_pack: int = 3  # pairs per packed row at most

    def __post_init__(self):
        if not self.train_dir and not self.corpus:
            raise ValueError(
                "config.data: set train_dir (prepared shards) or corpus (text to prepare)"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"config.data.eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if self.max_sequences_per_pack < 1:
            raise ValueError(
                f"config.data.max_sequences_per_pack={self.max_sequences_per_pack}: must be >= 1"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop lengths and periods (in optimizer steps); defaults: BERT's pre-training run."""

    num_steps: int = 1_000_000  # optimizer steps
    batch_size: int = 256  # global batch (sequences), split over processes and devices
    log_every: int = 100  # steps between metric fetches / log lines
    eval_every: int = 10_000  # steps between evaluations on the held-out shards
    eval_steps: int = 20  # batches per evaluation
    checkpoint_every: int = 10_000  # steps between checkpoints
    keep_checkpoints: int = 3  # newest checkpoints kept
    async_checkpointing: bool = True  # write checkpoints in the background
    nan_policy: str = "skip"  # non-finite loss/grad: 'skip' the update (counted) or 'stop'
    max_nonfinite_steps: int = 100  # with 'skip': stop after this many skipped updates
    prng_impl: str = "threefry2x32"  # RNG of the dropout seeds (masks are index hashes)
    profile_start: int = 10  # first step traced with jax.profiler (after compilation)
    profile_steps: int = 0  # steps traced into WORKDIR/profile (0 = no trace)

    def __post_init__(self):
        for name in (
            "num_steps",
            "batch_size",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: must be > 0")
        if self.profile_start < 0 or self.profile_steps < 0:
            raise ValueError(
                f"config.train.profile_start={self.profile_start} / profile_steps="
                f"{self.profile_steps}: must be >= 0"
            )
        if self.prng_impl not in ("threefry2x32", "rbg", "unsafe_rbg"):
            raise ValueError(
                f"config.train.prng_impl={self.prng_impl!r}: use threefry2x32, rbg or unsafe_rbg"
            )
        if self.nan_policy not in ("skip", "stop"):
            raise ValueError(f"config.train.nan_policy={self.nan_policy!r}: use 'skip' or 'stop'")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The resolved pre-training experiment: what library code receives."""

    model: ModelConfig
    model_size: str
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig
    seed: int = 0  # drives initialisation, dropout and data order
    init_checkpoint: str = ""  # bertjax checkpoint dir to start from (e.g. imported BERT)
    eval: PretrainEvalConfig = PretrainEvalConfig()

    @classmethod
    def from_config_dict(cls, config: Any, *, vocab_size: int | None = None) -> PretrainConfig:
        """Validates a ConfigDict; unknown or misspelt keys are errors naming them.

        `vocab_size` fills config.model.vocab_size when that is None (the rows of the data's
        vocab or of the init checkpoint); without either, ModelConfig's default stands in.
        """
        check_config_kind(config, fine_tuning=False)
        top = {"model", "data", "optim", "train", "mesh", "eval", "seed", "init_checkpoint"}
        unknown = sorted(set(config.keys()) - top)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(top)}")
        model = dict(config.model.to_dict())
        size = model.get("size", "custom")
        if vocab_size is not None and model.get("vocab_size") is None:
            model["vocab_size"] = vocab_size
        return cls(
            model=model_config_from_config_dict(model),
            model_size=size,
            data=from_group(DataConfig, config.data, "config.data"),
            optim=OptimConfig.from_config_dict(config.optim),
            train=from_group(TrainConfig, config.train, "config.train"),
            mesh=MeshConfig.from_config_dict(config.mesh),
            seed=int(config.seed),
            init_checkpoint=str(config.init_checkpoint or ""),
            eval=from_group(PretrainEvalConfig, config.get("eval", {}), "config.eval"),
        )
