"""Shared fixtures: tiny reference (Hugging Face PyTorch) BERT checkpoints and vocabularies."""

from __future__ import annotations

import os

# Before jax is imported anywhere: 8 fake CPU devices for the sharding tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# JAX's persistent compilation cache, shared by the test processes (xdist workers and the
# CLI subprocesses): a restarted run (the resume tests) loads what it compiled before. The
# size limit makes JAX lock the directory while it reads and writes entries.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(__import__("tempfile").gettempdir(), f"bertjax-tests-xla-{os.getuid()}"),
)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

import json  # noqa: E402

import pytest  # noqa: E402

WORDS = (
    "the a of and to in is was he she it they we you that this for on with as at by from "
    "model data text token sentence word piece train test run fast slow big small good bad "
    "cat dog sat mat hello world bert jax flax tensor shard mesh device host step loss"
).split()
PIECES = ["##s", "##ed", "##ing", "##er", "##ly", "##est", "##a", "##e", "##o", "##n"]
PUNCT = list(".,!?;:'\"()-")
SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The keys of google-research/bert's bert_config.json (modeling.BertConfig).
GOOGLE_BERT_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
)


def tiny_vocab() -> list[str]:
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = SPECIALS + PUNCT + letters + [f"##{c}" for c in letters] + WORDS + PIECES
    return list(dict.fromkeys(tokens))  # unique, in order


def write_vocab(directory: str, tokens: list[str] | None = None) -> str:
    tokens = tokens or tiny_vocab()
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def make_hf_model(directory: str, *, seed: int = 0, heads: bool = True, **overrides):
    """A random tiny transformers BERT saved in Hugging Face layout, with its vocab."""
    import torch
    import transformers

    torch.manual_seed(seed)
    vocab = tiny_vocab()
    kwargs = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    config = transformers.BertConfig(**kwargs)
    cls = transformers.BertForPreTraining if heads else transformers.BertModel
    model = cls(config).eval()
    model.save_pretrained(directory)
    write_vocab(directory, vocab)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    return model


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """(directory, torch model) of a tiny random BertForPreTraining."""
    d = str(tmp_path_factory.mktemp("hf_tiny"))
    return d, make_hf_model(d)


@pytest.fixture(scope="session")
def bertjax_dir(tmp_path_factory, hf_dir):
    """A bertjax model directory imported from the tiny Hugging Face model."""
    from bertjax import convert

    out = str(tmp_path_factory.mktemp("bj") / "ckpt")
    convert.convert_to_bertjax("hf", hf_dir[0], out)
    return out


# --- The data-pipeline tokenizer and documents (tests/_data_helpers.py) -----------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A WordPiece tokenizer over the _data_helpers vocabulary (stems and "##" suffixes)."""
    from _data_helpers import write_vocab as write_stem_vocab

    from data_pipelines.tokenizers import load_tokenizer

    return load_tokenizer(write_stem_vocab(tmp_path_factory.mktemp("vocab")))


@pytest.fixture(scope="module")
def token_docs(tok):
    """300 tokenized documents: docs[d][s] = ids of sentence s."""
    from _data_helpers import make_documents

    return [tok.encode_batch(doc) for doc in make_documents(300, seed=1)]


# --- A real Cloud Storage protocol: a local GCS emulator ------------------------------------------

GCS_BUCKET = "test-bucket"


@pytest.fixture(scope="module")
def gcs():
    """gcp-storage-emulator (in memory; with the generation headers of real Cloud Storage,
    see tests/gcs_emulator.py) on a free port of 127.0.0.1 with the bucket `test-bucket`, for
    the tests of one module; yields its URL.

    Every client bertjax uses is pointed at it: gcsfs (epath's gs:// backend) through
    STORAGE_EMULATOR_HOST, tensorstore (Orbax's arrays) through TENSORSTORE_GCS_HTTP_URL with
    a fixed bearer token (GOOGLE_AUTH_TOKEN_FOR_TESTING) instead of real credentials.
    Subprocesses inherit them.
    """
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "gcs_emulator.py"), "start",
         "--host=127.0.0.1",
         f"--port={port}", "--in-memory", f"--default-bucket={GCS_BUCKET}", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the GCS emulator exited at start-up"
            assert time.time() < deadline, "the GCS emulator did not start"
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "test-project",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


def tiny_hf_config(**overrides):
    """A 2-layer, 32-wide, 4-head transformers BertConfig over the tiny vocab; fields may be
    overridden."""
    import transformers

    shape = dict(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return transformers.BertConfig(**{**shape, **overrides})
