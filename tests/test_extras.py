"""The optional `tf` extra: every path that needs TensorFlow says so in one line without it,
and nothing else imports it (the base install, `make run`'s path, has no TensorFlow).

TensorFlow is installed in the test environment (the dev extra pulls in `tf`), so its absence
is simulated: a None entry in sys.modules makes `import tensorflow` raise ModuleNotFoundError,
as on a base install.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest
from _data_helpers import make_documents, write_corpus, write_vocab

from bertjax import convert_tf, storage
from bertjax import glue as glue_runner
from bertjax.config import ModelConfig
from bertjax.main import is_user_error, main
from data_pipelines import corpus_sources, pretraining_data
from data_pipelines import glue as glue_data
from data_pipelines import ner as ner_data
from data_pipelines import squad as squad_data

TF_MODULES = ("tensorflow", "tensorflow_datasets")
INSTALL = "pip install 'bertjax[tf]'"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def without_tf(monkeypatch):
    for name in TF_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def _small_corpus(tmp_path, num_docs: int = 8) -> str:
    return write_corpus(tmp_path / "corpus.txt", make_documents(num_docs, seed=1))


# Each path that needs the extra: (what the message names, the call).
PATHS = {
    "tfds corpus": (
        "tfds:wikipedia/20230601.en: reading a TFDS source needs TensorFlow Datasets",
        lambda tmp: corpus_sources.write_tfds_corpus("wikipedia/20230601.en", tmp / "out"),
    ),
    "glue tfds": (
        "reading GLUE from TFDS (data_dir tfds) needs TensorFlow Datasets",
        lambda tmp: glue_data.load_tfds_split("mrpc", "train"),
    ),
    "glue suite tfds": (
        "reading GLUE from TFDS (data_dir tfds) needs TensorFlow Datasets",
        lambda tmp: glue_runner.check_data("tfds", ["mrpc"], want_ax=False),
    ),
    "squad tfds": (
        "reading SQuAD from TFDS (data_dir tfds) needs TensorFlow Datasets",
        lambda tmp: squad_data.load_tfds_split("squad_v1", "train"),
    ),
    "ner tfds": (
        "reading conll2003 from TFDS (data_dir tfds) needs TensorFlow Datasets",
        lambda tmp: ner_data.load_tfds_split("train"),
    ),
    "tf1 import": (
        "reading a Google TF1 checkpoint (convert --from tf) needs TensorFlow",
        lambda tmp: convert_tf.read_tf(str(tmp)),
    ),
    "tf1 export": (
        "writing a Google TF1 checkpoint (convert --to tf) needs TensorFlow",
        lambda tmp: convert_tf.export_tf({}, ModelConfig(), str(tmp / "out")),
    ),
    "tfrecord output": (
        "writing TFRecord files (output_format tfrecord) needs TensorFlow",
        lambda tmp: pretraining_data.create_pretraining_data(
            _small_corpus(tmp), write_vocab(tmp), tmp / "out", output_format="tfrecord"
        ),
    ),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_tensorflow_path_without_the_extra_is_one_line_naming_it(path, tmp_path, without_tf):
    what, call = PATHS[path]
    with pytest.raises(storage.MissingExtraError) as e:
        call(tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(what) and message.endswith(f": {INSTALL}"), message
    assert is_user_error(e.value)  # the CLI prints it as one line, exit status 1
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_require_extra_names_the_missing_module(monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # TFDS installed, TensorFlow not
    with pytest.raises(storage.MissingExtraError, match=r"^x needs TensorFlow: pip"):
        storage.require_extra("tensorflow_datasets", "x")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(storage.MissingExtraError, match=r"^x needs TensorFlow Datasets: pip"):
        storage.require_extra("tensorflow_datasets", "x")


def test_require_extra_returns_the_module_when_installed():
    tf = pytest.importorskip("tensorflow")
    assert storage.require_extra("tensorflow", "x") is tf


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as e,
    ):
        main(["bertjax", *argv])
    return e.value.code, err.getvalue()


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ("corpus", "--source", "tfds:wikipedia/20230601.en", "--out", "{tmp}/wiki"),
            "bertjax corpus: error: tfds:wikipedia/20230601.en: reading a TFDS source needs "
            f"TensorFlow Datasets: {INSTALL}",
        ),
        (
            ("convert", "--from", "tf", "--src", "{tmp}", "--out", "{tmp}/ck"),
            "bertjax convert: error: reading a Google TF1 checkpoint (convert --from tf) needs "
            f"TensorFlow: {INSTALL}",
        ),
        (
            ("prepare", "--input", "{tmp}/corpus.txt", "--vocab", "{tmp}/vocab.txt",
             "--output", "{tmp}/data", "--output_format", "tfrecord"),
            "bertjax prepare: error: writing TFRecord files (output_format tfrecord) needs "
            f"TensorFlow: {INSTALL}",
        ),
    ],
)  # fmt: skip
def test_cli_without_the_extra_prints_one_error_line(argv, line, tmp_path, without_tf):
    _small_corpus(tmp_path)
    write_vocab(tmp_path)
    code, err = _cli(*(a.format(tmp=tmp_path) for a in argv))
    assert (code, err) == (1, line + "\n")


@pytest.mark.slow
def test_no_module_imports_tensorflow_and_make_run_path_runs_without_it(tmp_path):
    """Every module of bertjax, data_pipelines and experiments imports without TensorFlow,
    and `make run`'s command (`bertjax train --config experiments/pretrain/tiny_demo.py`,
    sizes shrunk, its embedded corpus written separately) never imports it."""
    train_corpus = _small_corpus(tmp_path, 16)
    code = f"""
import importlib, pkgutil, sys
import bertjax, data_pipelines, experiments

def tf_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in {TF_MODULES!r})

for pkg in (bertjax, data_pipelines, experiments):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
assert not tf_modules(), ("imported at import time", tf_modules())

from bertjax.main import main
from data_pipelines import corpus_sources
corpus_sources.write_embedded_corpus({str(tmp_path / "embedded.txt")!r})
try:
    main(["bertjax", "train", "--config", "experiments/pretrain/tiny_demo.py",
          "--workdir", {str(tmp_path / "run")!r}, "--config.data.corpus={train_corpus}",
          "--config.data.vocab_size=120", "--config.data.eval_fraction=0.25",
          "--config.data.max_seq_length=32",
          "--config.data.max_predictions_per_seq=5", "--config.train.num_steps=2",
          "--config.train.batch_size=8", "--config.train.log_every=1",
          "--config.train.eval_every=2", "--config.train.eval_steps=1",
          "--config.train.checkpoint_every=2", "--config.model.size=custom",
          "--config.model.num_layers=1", "--config.model.hidden_size=32",
          "--config.model.num_heads=2", "--config.model.intermediate_size=64"])
except SystemExit as e:
    assert e.code == 0, e.code
assert not tf_modules(), ("imported by make run's path", tf_modules())
"""
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
