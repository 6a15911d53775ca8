"""Hugging Face checkpoints: import and export of BERT directories, and Hub model ids.

A directory as transformers' `save_pretrained` writes it: config.json, model.safetensors
(or a sharded model-*.safetensors with its index, or a pytorch_model.bin) and the tokenizer
files. Tensor names follow the TF1 names of `bertjax.convert`'s table by a fixed spelling rule
(`convert_names.tf_to_hf_name`, `convert_names.hf_to_tf_name`); PyTorch keeps kernels [out, in].
A downstream head's task is read from and written to config.json's keys (`architectures`,
`id2label`, `label2id`, `problem_type`, `finetuning_task`; see `bertjax.convert`).

An export's tokenizer is what transformers' `save_pretrained` writes for a BERT tokenizer
(vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json) with the
checkpoint's own options, so transformers tokenizes every string as bertjax does. A
SentencePiece (unigram) tokenizer is exported as spm.model plus a tokenizer.json that rebuilds it
for the Rust library, loaded by PreTrainedTokenizerFast; `_sentencepiece_backend` names the
corners where its ids differ. An import reads vocab.txt, or, where only tokenizer.json is there
(transformers 5 writes no vocab.txt), the WordPiece vocabulary and options of tokenizer.json
(`tokenizer_from_tokenizer_json`).

Checkpoints are untrusted input: safetensors is read first; a pytorch_model.bin is only
read with `torch.load(weights_only=True)`; configs are parsed as JSON, never evaluated.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any

import numpy as np

from bertjax import checkpoint as ckpt
from bertjax import storage
from bertjax.config import (
    ModelConfig,
    model_config_from_bert_json,
    model_config_to_bert_json,
    read_json,
)
from bertjax.convert_names import (
    ConversionError,
    export_task,
    hf_architecture,
    hf_to_tf_name,
    label_config,
    params_and_task,
    params_to_tf_named,
    tf_to_hf_name,
)

log = logging.getLogger(__name__)

# Tensors that are not parameters of their own: buffers (tied copies are checked and dropped).
_HF_BUFFERS = ("bert.embeddings.position_ids",)


# --- Hugging Face Hub names -------------------------------------------------------------------
#
# `convert --from hf --src` and `bertjax.load` take a Hub model id ("bert-base-uncased",
# "org/name") where no such path exists: `resolve_hf_source` is the one place that turns either
# into a local checkpoint directory.

# huggingface_hub's rule for a repository id: "name" or "org/name" of letters, digits and "-_.",
# no "--" or "..", no part starting or ending with "-" or ".", at most 96 characters.
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+", re.ASCII)
# What `read_hf` and `convert.tokenizer_or_none` read; a repository's other files (TF, Flax, ONNX
# weights...) are not downloaded. pytorch_model.bin only where there is no safetensors file.
_HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "*.model",
]
_HUB_BIN = ["pytorch_model.bin"]


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelt as a Hugging Face Hub repository id."""
    parts = name.split("/")
    return (
        len(name) <= 96
        and _HUB_ID.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
        and not any(p[0] in "-." or p[-1] in "-." for p in parts)
    )


def resolve_hf_source(src: str) -> str:
    """The local (or gs://) directory of the Hugging Face checkpoint `src` names.

    A path that exists always wins: a checkpoint directory as it is; a Hub cache repository
    directory (.../models--org--name) gives its snapshot at refs/main (the only snapshot
    without refs/main). Otherwise `src` is read as a Hub model id and fetched with
    huggingface_hub's `snapshot_download`: from the local cache (HF_HUB_CACHE, HF_HOME) when it
    holds it, downloaded when the network allows (HF_HUB_OFFLINE=1: the cache only). Only the
    files a BERT import reads are fetched (config, safetensors weights, else
    pytorch_model.bin, tokenizer files).

    Raises FileNotFoundError (one line) when `src` is neither an existing path nor a Hub model
    that can be had, ConversionError for a Hub model that refuses access.
    """
    if storage.is_remote(src) or os.path.exists(src):
        return _hub_cache_snapshot(src)
    if not is_hub_id(src):
        raise FileNotFoundError(
            f"{src}: no such file or directory (nor a Hugging Face Hub model id, org/name)"
        )
    return _hub_snapshot(src)


def _hub_cache_snapshot(path: str) -> str:
    """`path`, or for a Hub cache repository directory the snapshot its refs/main names."""
    if storage.isfile(storage.join(path, "config.json")):
        return path
    snapshots = storage.join(path, "snapshots")
    if not storage.isdir(snapshots):
        return path
    ref = storage.join(path, "refs", "main")
    if storage.isfile(ref):
        return storage.join(snapshots, storage.read_text(ref).strip())
    revisions = storage.listdir(snapshots)
    if len(revisions) == 1:
        return storage.join(snapshots, revisions[0])
    raise FileNotFoundError(
        f"{path}: a Hub cache directory with several snapshots {revisions} and no refs/main; "
        "pass the snapshot directory itself"
    )


def _hub_snapshot(repo_id: str) -> str:
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory; to read it as a Hugging Face Hub model id, "
            "pip install huggingface_hub"
        ) from None
    from huggingface_hub import constants

    def fetch(patterns: list[str]) -> str:
        try:
            return huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns)
        except LocalEntryNotFoundError as e:
            # Newer huggingface_hub, the Hub out of reach: a cached snapshot that lacks some
            # of the files asked for (IncompleteSnapshotError). What the import needs may
            # still be there; read_hf names anything missing.
            partial = getattr(e, "snapshot_path", None)
            if partial and os.path.isfile(os.path.join(partial, "config.json")):
                return partial
            raise

    try:
        local = fetch(_HUB_FILES)
        if not glob.glob(os.path.join(local, "model*.safetensors*")):
            local = fetch(_HUB_BIN)
    except GatedRepoError:
        raise ConversionError(
            f"{repo_id}: a gated Hugging Face Hub model; accept its terms on the Hub and log "
            "in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory, nor a Hugging Face Hub model (or it is "
            "private: log in with hf auth login)"
        ) from None
    except LocalEntryNotFoundError:
        why = (
            "downloads are off (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "the Hub cannot be reached"
        )
        raise FileNotFoundError(
            f"{repo_id}: no such file or directory, and the Hugging Face Hub model {repo_id} is "
            f"not in the cache ({constants.HF_HUB_CACHE}) while {why}"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConversionError(
            f"{repo_id}: cannot fetch the Hugging Face Hub model ({type(e).__name__}: {first})"
        ) from None
    return local


# --- Import -----------------------------------------------------------------------------------


def _read_hf_tensors(src: str) -> dict[str, np.ndarray]:
    single = os.path.join(src, "model.safetensors")
    index = os.path.join(src, "model.safetensors.index.json")
    binary = os.path.join(src, "pytorch_model.bin")
    if os.path.isfile(single) or os.path.isfile(index):
        from safetensors.numpy import load_file

        files = (
            [single]
            if os.path.isfile(single)
            else sorted(
                {os.path.join(src, f) for f in read_json(index).get("weight_map", {}).values()}
            )
        )
        tensors = {}
        for f in files:
            try:
                tensors.update(load_file(f))
            except Exception as e:  # safetensors raises its own error types
                raise ConversionError(f"{f}: cannot read safetensors file ({e})") from e
        return tensors
    if os.path.isfile(binary):
        try:
            import torch
        except ImportError as e:
            raise ConversionError(
                f"{binary}: reading a PyTorch .bin needs torch (pip install 'bertjax[dev]'); "
                "or convert it to model.safetensors"
            ) from e
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConversionError(f"{binary}: cannot load with weights_only=True ({e})") from e
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ConversionError(
        f"{src}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _hf_to_tf_named(
    hf: dict[str, np.ndarray], source: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(TF1-named tensors, TF1 name -> the checkpoint's own name) of Hugging Face tensors."""
    hf = dict(hf)
    if not any(k.startswith("bert.") for k in hf) and any(k.startswith("embeddings.") for k in hf):
        top = ("cls.", "classifier.", "qa_outputs.")
        hf = {(k if k.startswith(top) else "bert." + k): v for k, v in hf.items()}
    # Old checkpoints spell LayerNorm parameters gamma/beta.
    hf = {
        re.sub(
            r"LayerNorm\.gamma$",
            "LayerNorm.weight",
            re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k),
        ): v
        for k, v in hf.items()
    }
    for k in _HF_BUFFERS:
        hf.pop(k, None)
    decoder_w = hf.pop("cls.predictions.decoder.weight", None)
    if decoder_w is not None and "bert.embeddings.word_embeddings.weight" in hf:
        if not np.array_equal(decoder_w, hf["bert.embeddings.word_embeddings.weight"]):
            raise ConversionError(
                f"{source}: cls.predictions.decoder.weight differs from the word embeddings; "
                "untied MLM decoders are not supported"
            )
    decoder_b = hf.pop("cls.predictions.decoder.bias", None)
    if decoder_b is not None and "cls.predictions.bias" not in hf:
        hf["cls.predictions.bias"] = decoder_b

    out, names = {}, {}
    for hf_name, value in hf.items():
        tf_name = hf_to_tf_name(hf_name)
        value = np.asarray(value)
        out[tf_name] = value.T if tf_name.endswith("/kernel") and value.ndim == 2 else value
        names[tf_name] = hf_name
    return out, names


def read_hf(
    src: str, *, skip_unknown: bool = False
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any] | None]:
    """Reads a Hugging Face BERT directory: (ModelConfig, bertjax params as numpy, task).

    A downstream head (BertForSequenceClassification, BertForTokenClassification,
    BertForQuestionAnswering) is kept, and `task` says what it means (checkpoint.check_task:
    kind from the architecture and `problem_type`, labels from `id2label`, name from
    `finetuning_task`); task is None without one. Raises ConversionError (a ValueError)
    naming the directory, config file or tensor that does not fit.
    """
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: not a directory")
    cfg_path = os.path.join(src, "config.json")
    values = read_json(cfg_path)
    config = model_config_from_bert_json(values, source=cfg_path)
    tf_named, names = _hf_to_tf_named(_read_hf_tensors(src), src)
    task_params = params_and_task(tf_named, values, config, src, cfg_path, skip_unknown, names)
    return (config, *task_params)


def import_hf(src: str, *, skip_unknown: bool = False) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a Hugging Face BERT directory: (ModelConfig, bertjax params as numpy); see
    `read_hf`, which also gives the task of a downstream head."""
    config, params, _ = read_hf(src, skip_unknown=skip_unknown)
    return config, params


def tokenizer_from_tokenizer_json(src: str, scratch: str):
    """A WordPiece tokenizer from a transformers tokenizer.json: its WordPiece vocabulary in
    id order (written to scratch/vocab.txt) and the options tokenizer_config.json gives,
    else those of its BertNormalizer, as transformers' BertTokenizer reads them. Raises
    ConversionError naming the file when the model is not WordPiece or its ids are not
    0..V-1."""
    from data_pipelines.tokenizers import WordPieceTokenizer

    path = os.path.join(src, "tokenizer.json")
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(
            f"{path}: model type {model.get('type')!r} is not WordPiece; only BERT WordPiece "
            "tokenizers can be imported"
        )
    vocab = model["vocab"]
    ids = sorted(i for i in vocab.values() if isinstance(i, int) and not isinstance(i, bool))
    tokens = sorted(vocab, key=vocab.get) if ids == list(range(len(vocab))) else []
    if not tokens or any(not t or "\n" in t or "\r" in t for t in tokens):
        raise ConversionError(f"{path}: the WordPiece vocab is not one token per id 0..V-1")
    normalizer = data.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {}
    cfg_path = os.path.join(src, "tokenizer_config.json")
    options = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    chosen = {}
    for key, normalizer_key, default in (
        ("do_lower_case", "lowercase", None),
        ("strip_accents", "strip_accents", None),
        ("tokenize_chinese_chars", "handle_chinese_chars", True),
    ):
        if key in options:
            where, value = cfg_path, options[key]
        else:
            where, value = path, normalizer.get(normalizer_key, default)
        if value is not None and not isinstance(value, bool):
            raise ConversionError(f"{where}: {key}={value!r} must be true, false or null")
        chosen[key] = value
    vocab_file = os.path.join(scratch, "vocab.txt")
    storage.write_text(vocab_file, "".join(t + "\n" for t in tokens))
    return WordPieceTokenizer(
        vocab_file,
        do_lower_case=chosen["do_lower_case"],
        strip_accents=chosen["strip_accents"],
        tokenize_chinese_chars=chosen["tokenize_chinese_chars"] is not False,
    )


# --- Export -----------------------------------------------------------------------------------


# The parameter groups (checkpoint.head_groups) each exported architecture loads.
_ARCHITECTURE_GROUPS = {
    "BertForPreTraining": {"pooler", "mlm", "nsp"},
    "BertForMaskedLM": {"mlm"},
    "BertForNextSentencePrediction": {"pooler", "nsp"},
    "BertModel": {"pooler"},
    "BertForSequenceClassification": {"pooler", "classifier"},
    "BertForTokenClassification": {"classifier"},
    "BertForQuestionAnswering": {"qa_outputs"},
}


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    out_dir: str,
    *,
    tokenizer: Any | None = None,
    task: dict[str, Any] | None = None,
    overwrite: bool = False,
    where: str = "the task metadata",
) -> str:
    """Writes a Hugging Face directory atomically: model.safetensors, config.json and, with
    a tokenizer, the files transformers' `save_pretrained` writes for a BERT tokenizer.

    config.json is complete for `hf_architecture(params, task)`, with the head's labels
    (`convert_names.label_config`) when there is a downstream head; `task` (checkpoint.check_task) is
    inferred from the parameters when None. Raises ConversionError naming `where` when the
    task does not fit the parameters.
    """
    from safetensors.numpy import save

    task = export_task(params, task, where=where)
    if task is not None and task.get("tagger"):
        raise ConversionError(
            f"{where}: a feature-based tagger (frozen encoder, {task['tagger']}) has no "
            "transformers class; export a fine-tuned NER model (freeze_encoder=False)"
        )
    arch = hf_architecture(params, task)
    unused = sorted(set(ckpt.head_groups(params)) - _ARCHITECTURE_GROUPS[arch])
    if unused:
        log.warning(
            "%s: %s does not use the %s parameters; they are written anyway", out_dir, arch, unused
        )
    tensors = {}
    for tf_name, value in params_to_tf_named(params).items():
        hf_name, transposed = tf_to_hf_name(tf_name)
        tensors[hf_name] = np.ascontiguousarray(value.T if transposed else value)

    def write(tmp: str) -> None:
        # Bytes through storage (safetensors' save_file creates the file 0600, whatever the umask).
        data = save(tensors, metadata={"format": "pt"})
        storage.write_bytes(os.path.join(tmp, "model.safetensors"), data)
        hf_config = model_config_to_bert_json(config)
        hf_config["architectures"] = [arch]
        if task is not None:
            hf_config.update(
                label_config(task, ckpt.head_outputs(params, ckpt.TASK_KINDS[task["kind"]]))
            )
        storage.write_json(os.path.join(tmp, "config.json"), hf_config)
        if tokenizer is not None:
            _write_hf_tokenizer(tokenizer, tmp, config)

    return ckpt.write_atomically(out_dir, write, overwrite=overwrite)


HF_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _write_hf_tokenizer(tokenizer: Any, out_dir: str, config: ModelConfig) -> None:
    """vocab.txt or spm.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json.

    WordPiece: tokenizer.json is the Rust tokenizer bertjax tokenizes with (normalizer with the
    checkpoint's lowercasing, accent and CJK options, pre-tokenizer, WordPiece model,
    decoder, special tokens) plus BERT's post-processor ([CLS] A [SEP], [CLS] A [SEP] B [SEP]
    with segment ids 0 and 1), without padding or truncation (transformers sets those per
    call); tokenizer_config.json gives the same options to transformers' BertTokenizer.

    SentencePiece (unigram): tokenizer.json rebuilds the model for the Rust library
    (`_sentencepiece_backend`) with the same post-processor; tokenizer_config.json names
    PreTrainedTokenizerFast, which loads tokenizer.json as it is, and keeps bertjax's own keys
    (kind, do_lower_case, model_file) so that the export also loads back into bertjax.
    """
    tokenizer.save(out_dir)
    kind = getattr(tokenizer, "kind", "wordpiece")
    if kind == "wordpiece":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend.to_str())  # a copy: the original is shared
        special_tokens = HF_SPECIAL_TOKENS
        tokenizer_config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": bool(tokenizer.do_lower_case),
            "strip_accents": tokenizer.strip_accents,
            "tokenize_chinese_chars": bool(tokenizer.tokenize_chinese_chars),
            "do_basic_tokenize": True,
            "never_split": None,
            "clean_up_tokenization_spaces": True,
        }
    else:
        backend = _sentencepiece_backend(tokenizer, out_dir) if kind == "sentencepiece" else None
        if backend is None:
            log.warning(
                "a %s tokenizer has no Hugging Face tokenizer equivalent here; "
                "its files are copied as they are",
                kind,
            )
            return
        roles = ("unk", "sep", "pad", "cls", "mask")
        pieces = tokenizer.convert_ids_to_tokens([getattr(tokenizer, f"{r}_id") for r in roles])
        special_tokens = {f"{r}_token": p for r, p in zip(roles, pieces, strict=True)}
        tokenizer_config = {
            **tokenizer.config(),
            "model_file": _spm_file(),
            "tokenizer_class": "PreTrainedTokenizerFast",
            # BERT's inputs; PreTrainedTokenizerFast returns no token_type_ids unless told.
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
            "clean_up_tokenization_spaces": False,
        }
    from tokenizers import processors

    cls, sep = special_tokens["cls_token"], special_tokens["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)],
    )
    backend.no_padding()
    backend.no_truncation()
    storage.write_text(os.path.join(out_dir, "tokenizer.json"), backend.to_str(pretty=True))
    storage.write_json(os.path.join(out_dir, "special_tokens_map.json"), special_tokens)
    storage.write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            **tokenizer_config,
            "model_max_length": config.max_position_embeddings,
            **special_tokens,
        },
    )


def _spm_file() -> str:
    from data_pipelines.tokenizers import SPM_FILE

    return SPM_FILE


def _sentencepiece_backend(tokenizer: Any, out_dir: str):
    """The Rust `tokenizers` equivalent of a SentencePiece unigram model (None for one it
    cannot express: BPE, or whitespace as a suffix).

    Read from the ModelProto bytes (`sentencepiece_model_pb2`): a Unigram model with the
    same pieces, scores and unknown id; SentencePiece's normalizer as a sequence: Lowercase
    where bertjax lowercases the text before encoding, the model's `precompiled_charsmap`
    (NFKC, control characters removed, other spaces made " "), then the whitespace rules
    SentencePiece applies to the normalized text (remove_extra_whitespaces: spaces stripped
    at both ends and runs of them collapsed; add_dummy_prefix: "▁" before non-empty text;
    escape_whitespaces: " " -> "▁", trailing "▁" dropped as SentencePiece drops them);
    Metaspace to split before each "▁" and to decode (splitting changes nothing when no piece
    holds "▁" past its start, as with SentencePiece's default split_by_whitespace); control
    and unknown pieces as special added tokens, user-defined ones as added tokens.

    Tested for models `train_vocab` writes (cased and lowercased): the ids of
    `SentencePieceTokenizer.encode` on mixed-script text and on every Basic Multilingual
    Plane character. Known differences:

    * a special token's string in the text ("[MASK]", "[unused3]", or a form that normalizes
      to one, such as "［MASK］" in a cased model): transformers matches special tokens in the
      text (and the Unigram model may produce one), and the text after one is normalized as
      a string of its own, so its first piece starts a word; SentencePiece never produces
      control symbols from text.
    * a grapheme cluster shorter than 6 UTF-8 bytes that goes on past the shortest charsmap
      entry matching its start (e + U+0301 + U+0327, a full-width letter + U+0301):
      tokenizers' Precompiled replaces the whole cluster by that entry's output, dropping
      the rest; SentencePiece takes the longest entry and goes on after it.
    * do_lower_case with a model that does not case-fold itself (not `train_vocab`'s, whose
      nmt_nfkc_cf folds): Python's `str.lower` gives a word-final "ς" for "Σ", the Rust
      Lowercase "σ".

    Byte fallback and user-defined pieces are carried over but not tested.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    with open(os.path.join(out_dir, _spm_file()), "rb") as f:
        proto.ParseFromString(f.read())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != trainer.UNIGRAM or trainer.treat_whitespace_as_suffix:
        return None
    piece_types = proto.SentencePiece
    backend = Tokenizer(
        Unigram(
            [(p.piece, p.score) for p in proto.pieces],
            unk_id=tokenizer.unk_id,
            byte_fallback=trainer.byte_fallback,
        )
    )
    steps = [normalizers.Lowercase()] if tokenizer.do_lower_case else []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # Prepend leaves an empty string empty
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
        if norm.remove_extra_whitespaces:
            steps.append(normalizers.Replace(Regex(r"▁+\z"), ""))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    special = (piece_types.CONTROL, piece_types.UNKNOWN)
    backend.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in proto.pieces
            if p.type in special
        ]
    )
    user = [p.piece for p in proto.pieces if p.type == piece_types.USER_DEFINED]
    if user:
        backend.add_tokens([AddedToken(p, special=False, normalized=False) for p in user])
    return backend
