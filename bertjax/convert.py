"""`bertjax convert`: a checkpoint from Hugging Face or original Google TF1 into a bertjax
model directory, and back.

The formats have a module each, both built on one name table (`bertjax.convert_names`, where
the table of every parameter's three names is documented): `bertjax.convert_hf` (Hugging Face
directories and Hub model ids) and `bertjax.convert_tf` (TF1 checkpoints; TensorFlow, the [tf]
extra, is imported only when one is read or written). This module picks the format and adds
the tokenizer beside the checkpoint (`tokenizer_or_none`).

Checkpoints are untrusted input: tensors are read without running code (convert_hf: safetensors
first, a pytorch_model.bin only with `torch.load(weights_only=True)`); configs are parsed as
JSON, never evaluated.
"""

from __future__ import annotations

import logging
import os
import tempfile

from bertjax import checkpoint as ckpt
from bertjax import convert_hf, convert_tf, storage
from bertjax.convert_names import ConversionError

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("vocab.txt", "spm.model", "sentencepiece.model", "tokenizer_config.json")
_MODEL_FILES = ("vocab.txt", "spm.model", "sentencepiece.model")


def tokenizer_or_none(src: str, scratch: str | None = None):
    """The tokenizer beside a checkpoint; None (with a warning) when there is none.

    With `scratch` (a directory for a vocab.txt), a transformers directory that holds a
    tokenizer.json but no vocab.txt (what transformers 5 writes) is read through
    `convert_hf.tokenizer_from_tokenizer_json`. A tokenizer file that is present but
    unreadable is an error, not a silent omission.
    """
    from data_pipelines.tokenizers import load_tokenizer

    has_model_file = any(storage.isfile(storage.join(src, f)) for f in _MODEL_FILES) or any(
        f.endswith(".model") for f in storage.listdir(src)
    )
    if scratch and not has_model_file and storage.isfile(storage.join(src, "tokenizer.json")):
        return convert_hf.tokenizer_from_tokenizer_json(src, scratch)
    if not any(storage.isfile(storage.join(src, f)) for f in _TOKENIZER_FILES):
        log.warning(
            "%s: no tokenizer files (%s); the checkpoint will have no vocab and "
            "commands that tokenize text will need one",
            src,
            ", ".join(_TOKENIZER_FILES),
        )
        return None
    return load_tokenizer(src)


def convert_to_bertjax(
    kind: str, src: str, out: str, *, overwrite: bool = False, skip_unknown: bool = False
) -> str:
    """`bertjax convert --from hf|tf --src DIR --out DIR`: parameters, config, the task of a
    downstream head (`convert_hf.read_hf` / `convert_tf.read_tf`) and the tokenizer beside the
    checkpoint. An hf `src` may also be a Hub model id (`convert_hf.resolve_hf_source`)."""
    if kind == "hf":
        src = convert_hf.resolve_hf_source(src)
    ckpt.check_output_spares(out, src)
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    if kind not in ("hf", "tf"):
        raise ConversionError(f"unknown source format {kind!r}; use hf or tf")
    # safetensors, torch and TF's checkpoint reader open local files: a bucket source is
    # read from a temporary local copy.
    with storage.local_copy(src) as local_src:
        return _convert_to_bertjax(
            kind, local_src, out, storage.abspath(src), overwrite, skip_unknown
        )


def _convert_to_bertjax(
    kind: str, src: str, out: str, source: str, overwrite: bool, skip_unknown: bool
) -> str:
    read = convert_hf.read_hf if kind == "hf" else convert_tf.read_tf
    config, params, task = read(src, skip_unknown=skip_unknown)
    tok_dir = src if os.path.isdir(src) else (os.path.dirname(src) or ".")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tokenizer_or_none(tok_dir, scratch)
        if tokenizer is not None:
            vocab_file = ckpt.tokenizer_file(tokenizer)
            if vocab_file.startswith(scratch):  # read from tokenizer.json
                vocab_file = os.path.join(tok_dir, "tokenizer.json")
            config_name = "config.json" if kind == "hf" else "bert_config.json"
            ckpt.check_vocab_fits(
                tokenizer.vocab_size,
                config.vocab_size,
                vocab_source=vocab_file,
                model_source=os.path.join(tok_dir, config_name),
            )
        return ckpt.save_model_dir(
            out,
            params,
            config,
            tokenizer=tokenizer,
            source=f"{kind}:{source}",
            task=task,
            overwrite=overwrite,
        )


def convert_from_bertjax(kind: str, src: str, out: str, *, overwrite: bool = False) -> str:
    """`bertjax convert --to hf|tf --src CKPT --out DIR`: the parameters, the config, the
    task metadata of a downstream head (bertjax_config.json's "task") and the tokenizer."""
    ckpt.check_output_spares(out, src)
    if ckpt.holds_checkpoint(out) and not overwrite:
        raise ConversionError(f"{out}: output directory is not empty; pass --overwrite")
    config, params, meta = ckpt.load_model_dir(src)
    tokenizer = tokenizer_or_none(src)
    if tokenizer is not None:
        ckpt.check_tokenizer_fits(
            tokenizer, config, model_source=os.path.join(src, ckpt.CONFIG_FILE)
        )
    options = dict(
        tokenizer=tokenizer,
        task=meta.get("task"),
        overwrite=overwrite,
        where=os.path.join(src, ckpt.CONFIG_FILE),
    )
    if kind == "hf":
        return convert_hf.export_hf(params, config, out, **options)
    if kind == "tf":
        return convert_tf.export_tf(params, config, out, **options)
    raise ConversionError(f"unknown target format {kind!r}; use hf or tf")
