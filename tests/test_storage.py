"""The path layer (bertjax.storage) on local paths and on gs:// against a real storage
protocol: a local GCS emulator (conftest `gcs`), which gcsfs (epath) and tensorstore (Orbax)
both talk to over HTTP.

On the bucket: every helper of the path layer; metrics.jsonl and TensorBoard across a
restart; a pre-training workdir (Orbax checkpoints, config, tokenizer) read back through
tensorstore and used by `convert --to hf` (export written to the bucket) and `features`
(input and output in the bucket); `convert --from hf` from and to the bucket; corpus text
files and a TFDS corpus export; GLUE
fine-tuning reading its data from and writing its workdir to the bucket; and the one-line
errors for a missing bucket or object, a bucket dataset (ArrayRecord) and an unwritable
workdir. Orbax writes checkpoints into the bucket through tensorstore, whose commit reads the
object generation header that tests/gcs_emulator.py adds to the emulator (as real Cloud
Storage sends it); the emulator does not enforce write preconditions, so a race between two
writers is not tested here.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import pytest
from conftest import GCS_BUCKET

from bertjax import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["local", "gs"])
def base(request, tmp_path):
    """A fresh directory: a local one, or a fresh prefix of the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "d")
    request.getfixturevalue("gcs")
    return f"gs://{GCS_BUCKET}/unit-{time.time_ns()}"


def test_paths_reads_writes_and_listings(base):
    if storage.is_remote(base):
        assert storage.abspath(base) == base  # never os.path.abspath on a URI
    else:
        assert storage.abspath("rel/x") == os.path.abspath("rel/x")
    cfg = storage.join(base, "sub", "cfg.json")
    storage.write_json(cfg, {"b": 1, "a": [1, 2]})
    assert storage.read_text(cfg) == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert storage.read_json(cfg) == {"a": [1, 2], "b": 1}
    storage.write_bytes(storage.join(base, "sub", "x.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(base, "sub", "x.bin")) == b"\x00\x01"
    assert storage.isdir(storage.join(base, "sub")) and storage.isfile(cfg)
    assert storage.listdir(storage.join(base, "sub")) == ["cfg.json", "x.bin"]
    assert storage.glob(storage.join(base, "sub", "*.json")) == [storage.abspath(cfg)]
    storage.remove(cfg)
    assert not storage.exists(cfg) and storage.listdir(storage.join(base, "sub")) == ["x.bin"]
    storage.rmtree(storage.join(base, "sub"))
    assert not storage.exists(storage.join(base, "sub", "x.bin"))


def test_nothing_half_written_is_published(base):
    """A write that fails leaves neither the target nor a temporary behind; an existing
    target keeps its old content; a directory appears whole or not at all."""
    target = storage.join(base, "metrics.json")
    storage.write_text(target, "old\n")
    with pytest.raises(RuntimeError), storage.atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert storage.read_text(target) == "old\n"
    assert storage.listdir(base) == ["metrics.json"]  # no temporary left

    out = storage.join(base, "model")

    def fail(tmp: str) -> None:
        storage.write_text(os.path.join(tmp, "params.bin"), "p")
        raise RuntimeError("killed mid-directory")

    with pytest.raises(RuntimeError):
        storage.publish_dir(out, fail, overwrite=False, marker="done.json")
    assert not storage.exists(out) and storage.listdir(base) == ["metrics.json"]

    def write(version: str):
        def w(tmp: str) -> None:
            storage.write_text(os.path.join(tmp, "params.bin"), version)
            storage.write_text(os.path.join(tmp, "nested", "shard.bin"), version)
            storage.write_text(os.path.join(tmp, "done.json"), "{}")

        return w

    assert storage.publish_dir(out, write("v1"), overwrite=False, marker="done.json") == (
        storage.abspath(out)
    )
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        storage.publish_dir(out, write("v2"), overwrite=False, marker="done.json")
    storage.publish_dir(out, write("v2"), overwrite=True, marker="done.json")
    assert storage.read_text(storage.join(out, "nested", "shard.bin")) == "v2"
    assert storage.listdir(out) == ["done.json", "nested", "params.bin"]
    assert sorted(storage.listdir(base)) == ["metrics.json", "model"]


def test_missing_bucket_or_object_is_one_line_naming_it(gcs, capsys):
    from bertjax import main

    with pytest.raises(FileNotFoundError, match="gs://test-bucket/no/such.json"):
        storage.read_text("gs://test-bucket/no/such.json")
    with pytest.raises(FileNotFoundError, match="gs://no-such-bucket/x"):
        storage.read_bytes("gs://no-such-bucket/x")
    for argv, name in (
        (["convert", "--to", "hf", "--src", "gs://no-such-bucket/run"], "gs://no-such-bucket/run"),
        (["convert", "--to", "hf", "--src", f"gs://{GCS_BUCKET}/none"], f"gs://{GCS_BUCKET}/none"),
    ):
        with pytest.raises(SystemExit) as e:
            main.main(["bertjax", *argv, "--out", f"gs://{GCS_BUCKET}/out-x"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and len(err.splitlines()) == 1 and name in err, err


def test_a_bucket_dataset_points_to_the_fuse_recipe(gcs):
    from data_pipelines.records import load_dataset_info

    with pytest.raises(storage.StorageError, match="Cloud Storage FUSE") as e:
        load_dataset_info(f"gs://{GCS_BUCKET}/data/train")
    assert len(str(e.value).splitlines()) == 1 and "gs://test-bucket/data/train" in str(e.value)


def test_unwritable_workdir_fails_before_compiling(gcs, tmp_path, monkeypatch):
    from bertjax import pretrain, sharding

    def no(*a, **k):
        raise AssertionError("reached the mesh: the workdir was not checked first")

    monkeypatch.setattr(sharding, "make_mesh", no)
    monkeypatch.setattr(pretrain, "prepare_data", no)
    with pytest.raises(storage.StorageError, match="gs://no-such-bucket/run: cannot write"):
        pretrain.train(None, "gs://no-such-bucket/run")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(storage.StorageError, match="cannot write"):
            pretrain.train(None, str(ro / "run"))


# --- End to end on the bucket ------------------------------------------------------------------


def test_metrics_jsonl_and_tensorboard_in_a_bucket_resume_without_duplicates(gcs):
    from bertjax import trainer

    work = f"gs://{GCS_BUCKET}/metrics-{time.time_ns()}"
    w = trainer.MetricWriter(work, resume_step=-1)
    for step in range(1, 5):
        w.write(step, {"loss": float(step)})
    w.close()
    w = trainer.MetricWriter(work, resume_step=2)  # killed after step 4, resumed from 2
    w.write(3, {"loss": 30.0})
    w.close()
    steps = [json.loads(x)["step"] for x in storage.read_text(f"{work}/metrics.jsonl").splitlines()]
    assert steps == [1, 2, 3]
    assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{work}/tensorboard"))


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """Prepared shards and a vocab on local disk (ArrayRecord is read from local paths)."""
    from data_pipelines.pretraining_data import create_pretraining_data
    from data_pipelines.vocab import train_vocab

    sys.path.insert(0, os.path.dirname(__file__))
    from test_pretrain import _config, _write_corpus

    root = tmp_path_factory.mktemp("bucket_pretrain_data")
    _write_corpus(str(root / "train.txt"), n_docs=40, seed=0)
    tok = train_vocab(
        [str(root / "train.txt")], kind="wordpiece", vocab_size=128, out_dir=str(root / "vocab")
    )
    create_pretraining_data(
        [str(root / "train.txt")], tok, str(root / "train"), max_seq_length=32,
        max_predictions_per_seq=5, num_workers=1, progress=False, dupe_factor=1,
    )  # fmt: skip
    dirs = str(root / "train"), "", str(root / "vocab")
    return dirs, _config


@pytest.mark.slow
def test_pretraining_in_a_bucket_resumes_exactly_and_feeds_convert_and_features(
    gcs, data_dirs, tmp_path, capsys
):
    """Pre-training with its workdir in the bucket: Orbax writes its checkpoints through
    tensorstore, metrics.jsonl and the config go through the path layer; stopped after 2
    steps and restarted for 4, it resumes from the bucket and ends with the parameters of an
    uninterrupted local run. `convert --to hf` then writes its export into the bucket and
    `features` reads its input from and writes its output to the bucket."""
    import numpy as np

    from bertjax import checkpoint as ckpt
    from bertjax import main, pretrain

    dirs, config = data_dirs
    over = {"train.eval_every": 100, "train.async_checkpointing": False}
    local = str(tmp_path / "run")
    pretrain.train(config(dirs, **{**over, "train.num_steps": 4}), local)
    run = f"gs://{GCS_BUCKET}/run"
    pretrain.train(config(dirs, **{**over, "train.num_steps": 2}), run)
    assert ckpt.restore_workdir_params(run)[0] == 2
    pretrain.train(config(dirs, **{**over, "train.num_steps": 4}), run)  # resumes at step 2
    assert ckpt.is_workdir(run) and storage.isfile(f"{run}/vocab.txt")
    (s1, p1), (s2, p2) = ckpt.restore_workdir_params(local), ckpt.restore_workdir_params(run)
    assert s1 == s2 == 4
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(x)["step"] for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert sorted(set(steps)) == sorted(steps)  # each step logged once across the restart

    hf = f"gs://{GCS_BUCKET}/export/hf"
    with pytest.raises(SystemExit) as e:
        main.main(["bertjax", "convert", "--to", "hf", "--src", run, "--out", hf])
    assert e.value.code == 0, capsys.readouterr().err[-3000:]
    assert storage.read_json(f"{hf}/config.json")["architectures"] == ["BertForPreTraining"]
    assert {"model.safetensors", "tokenizer.json", "vocab.txt"} <= set(storage.listdir(hf))
    text = f"gs://{GCS_BUCKET}/features/in.txt"
    storage.write_text(text, "the cat sees the dog .\nthe dog ||| in the barn .\n")
    feats = f"gs://{GCS_BUCKET}/features/out.jsonl"
    with pytest.raises(SystemExit) as e:
        main.main(["bertjax", "features", "--checkpoint", run, "--input", text,
                   "--output", feats, "--layers=-1", "--max_seq_length=32"])  # fmt: skip
    assert e.value.code == 0, capsys.readouterr().err[-3000:]
    lines = [json.loads(x) for x in storage.read_text(feats).splitlines()]
    assert [x["line"] for x in lines] == [0, 1] and len(lines[0]["layers"]["-1"][0]) == 32


@pytest.mark.slow
def test_glue_finetuning_reads_its_data_from_the_bucket(gcs, bertjax_dir, tmp_path):
    from bertjax import checkpoint as ckpt
    from bertjax import finetune as ft
    from bertjax import tasks

    sys.path.insert(0, os.path.dirname(__file__))
    from test_finetune import tiny_config, write_sst2

    local = str(tmp_path / "glue")
    write_sst2(local, n_train=32, n_dev=16, n_test=8)
    data = f"gs://{GCS_BUCKET}/glue"
    for name in os.listdir(os.path.join(local, "SST-2")):
        storage.copy_file(os.path.join(local, "SST-2", name), f"{data}/SST-2/{name}")
    work = f"gs://{GCS_BUCKET}/finetune/sst2"  # Orbax checkpoints, best model, results
    r = tasks.finetune(tiny_config(bertjax_dir, data, "sst2", num_epochs=1.0), work)
    assert set(r["metrics"]) == {"accuracy"}
    assert storage.read_json(f"{work}/{ft.RESULTS_FILE}")["complete"] is True
    assert ckpt.is_model_dir(f"{work}/best")
    rows = storage.read_text(r["submission_files"]["SST-2.tsv"]).splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 9
    assert not storage.exists(f"{work}/{ckpt.CHECKPOINTS_DIR}")  # removed once complete


def test_import_reads_a_hugging_face_checkpoint_from_the_bucket(gcs, hf_dir):
    from bertjax import checkpoint as ckpt
    from bertjax import convert

    src = f"gs://{GCS_BUCKET}/hf-src"
    for name in os.listdir(hf_dir[0]):
        storage.copy_file(os.path.join(hf_dir[0], name), f"{src}/{name}")
    out = convert.convert_to_bertjax("hf", src, f"gs://{GCS_BUCKET}/imported")
    assert out == f"gs://{GCS_BUCKET}/imported" and ckpt.is_model_dir(out)
    config, params, meta = ckpt.load_model_dir(out)
    assert meta["source"] == f"hf:{src}" and config.num_layers == 2
    local_config, local_params, _ = ckpt.load_model_dir(convert.convert_to_bertjax(
        "hf", hf_dir[0], os.path.join(os.path.dirname(hf_dir[0]), "imported-local")
    ))  # fmt: skip
    assert config == local_config
    for a, b in zip(
        ckpt.flatten_params(params).values(),
        ckpt.flatten_params(local_params).values(),
        strict=True,
    ):
        assert (a == b).all()


def test_corpus_text_files_in_the_bucket(gcs):
    """The one text reader and writer: BERT-format files written to, globbed in and read from
    the bucket, and a TFDS export whose shards are uploaded there."""
    from data_pipelines import corpus, corpus_sources

    sys.path.insert(0, os.path.dirname(__file__))
    from test_corpus_sources import WIKI, _mock_wikipedia

    root = f"gs://{GCS_BUCKET}/corpus"
    docs = [["One sentence here.", "And a second."], ["Another document."]]
    stats = corpus.write_documents(docs, f"{root}/a.txt")
    corpus.write_documents(docs[:1], f"{root}/b.txt")
    assert stats.num_documents == 2 and stats.num_bytes == len(storage.read_bytes(f"{root}/a.txt"))
    files = corpus.expand_input_files(f"{root}/*.txt")
    assert files == [f"{root}/a.txt", f"{root}/b.txt"]
    assert list(corpus.iter_documents(files)) == docs + docs[:1]
    with _mock_wikipedia(WIKI):
        shards = corpus_sources.write_tfds_corpus(
            "wikipedia/20230601.en", f"{root}/wiki", num_shards=2
        )
    assert shards == [f"{root}/wiki/corpus-0000{i}-of-00002.txt" for i in range(2)]
    assert list(corpus.iter_documents(shards[1])) == [["Beta stands alone."]]


def test_an_unreachable_object_store_is_one_line_naming_the_path():
    """What a client raises when the store cannot be reached (here as aiohttp's connection
    error would) becomes one StorageError naming the path; local errors pass unchanged.
    (Measured against a closed port: `bertjax features --checkpoint gs://...` prints
    `...: cannot reach the object store (ClientConnectorError: ...)` and exits 1.)"""
    with pytest.raises(storage.StorageError) as e:
        with storage._reaching("gs://b/ckpt/bertjax_config.json"):
            raise ConnectionRefusedError("Cannot connect to host 127.0.0.1:9\nmore")
    assert str(e.value).startswith(
        "gs://b/ckpt/bertjax_config.json: cannot reach the object store "
        "(ConnectionRefusedError: Cannot connect to host 127.0.0.1:9)"
    )
    with pytest.raises(FileNotFoundError):
        with storage._reaching("gs://b/x"):
            raise FileNotFoundError("gs://b/x")
    with pytest.raises(PermissionError):
        with storage._reaching("/local/x"):
            raise PermissionError("/local/x")


# --- File modes --------------------------------------------------------------------------------


def _modes(root) -> tuple[set[int], set[int]]:
    """(modes of the directories, modes of the files) at and under root."""
    dirs, files = {os.stat(root).st_mode & 0o777}, set()
    for d, subdirs, names in os.walk(root):
        dirs |= {os.stat(os.path.join(d, s)).st_mode & 0o777 for s in subdirs}
        files |= {os.stat(os.path.join(d, n)).st_mode & 0o777 for n in names}
    return dirs, files


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_outputs_follow_the_umask(mask, hf_dir, tmp_path, monkeypatch):
    """Directories made under a temporary name and renamed into place (mkdtemp: 0700) and
    files written through a temporary file (mkstemp: 0600) get the modes os.makedirs and
    open() give: with umask 022 drwxr-xr-x and -rw-r--r--, with 077 they stay private.
    Outputs of four commands: `convert` (a model directory: publish_dir, Orbax's files),
    `convert --to hf` (model.safetensors, tokenizer.json), `vocab` and `prepare` (publish_dir
    and atomic files too), and one atomic file."""
    from bertjax import convert
    from data_pipelines import pretraining_data as pdata
    from data_pipelines.vocab import train_vocab

    monkeypatch.setattr(storage, "_UMASK", mask)  # read once per process; set for this test
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat .\nthe dog sat .\n\nhello world .\nbert jax .\n" * 4)
    out = tmp_path / "out"
    old = os.umask(mask)
    try:
        convert.convert_to_bertjax("hf", hf_dir[0], str(out / "model"))
        convert.convert_from_bertjax("hf", str(out / "model"), str(out / "hf"))
        tok = train_vocab([str(text)], kind="wordpiece", vocab_size=300, out_dir=out / "vocab")
        pdata.create_pretraining_data(
            [str(text)], tok, out / "examples", dupe_factor=1, num_output_shards=1, progress=False
        )
        storage.write_json(str(out / "notes.json"), {"a": 1})
    finally:
        os.umask(old)
    assert sorted(os.listdir(out)) == ["examples", "hf", "model", "notes.json", "vocab"]
    assert {"model.safetensors", "tokenizer.json"} <= set(os.listdir(out / "hf"))
    dirs, files = _modes(out)
    assert dirs == {0o777 & ~mask}, sorted(map(oct, dirs))
    assert files == {0o666 & ~mask}, sorted(map(oct, files))


def test_the_umask_is_read_without_changing_it(monkeypatch):
    import subprocess

    code = (
        "import os; os.umask(0o027); from bertjax import storage; "
        "print(oct(storage._UMASK), oct(os.umask(0)), oct(storage.dir_mode()), "
        "oct(storage.file_mode()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0o27", "0o27", "0o750", "0o640"]

    # Without /proc (other systems): set and restored, the same value.
    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(storage, "open", no_proc, raising=False)
    old = os.umask(0o026)
    try:
        assert storage._read_umask() == 0o026 and os.umask(old) == 0o026
    finally:
        os.umask(old)


def test_workdir_lock_refuses_a_second_run_in_one_line(tmp_path):
    """Held by another process, the lock stops a second holder at once with one line naming
    the lock and the flag; released when the holder ends, the next one takes it. A directory
    the lock created and nothing else wrote is removed again; a bucket URI is not locked."""
    import subprocess

    work = str(tmp_path / "work")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from bertjax import storage\n"
         f"with storage.workdir_lock({work!r}):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(storage.WorkdirInUseError) as e:
            with storage.workdir_lock(work):
                pass
        assert str(e.value) == (
            f"{work} is in use by another run (lock {work}/.lock held); wait for it or use "
            "another --workdir"
        )
        with storage.workdir_lock(work, primary=False):  # another process of a multi-host run
            pass
    finally:
        holder.communicate("", timeout=60)
    with storage.workdir_lock(work):  # released with the holder
        with open(os.path.join(work, "metrics.jsonl"), "w") as f:
            f.write("{}\n")
    with storage.workdir_lock(work):  # released at the end of the block
        pass
    assert sorted(os.listdir(work)) == [".lock", "metrics.jsonl"]
    with storage.workdir_lock(str(tmp_path / "empty")):
        pass
    assert not (tmp_path / "empty").exists()
    with storage.workdir_lock(f"gs://{GCS_BUCKET}/never-made"):
        pass


def test_stale_temporary_outputs_are_removed(tmp_path):
    """What publish_dir, temp_dir_beside and atomic_open leave when killed is removed; the
    outputs themselves and other names are kept."""
    d = tmp_path / "data"
    (d / "train").mkdir(parents=True)
    stale = [storage.temp_dir_beside(d / "train"), str(d / "eval.tmp-ab12cd_9"),
             str(d / "vocab.old-0123abcd"), str(d / ".info.json.tmp-a1b2c3d4")]  # fmt: skip
    for p in stale[1:3]:
        os.makedirs(p)
    open(stale[3], "w").close()
    (d / "notes.tmp-x").write_text("kept: not a temporary name")
    assert storage.remove_stale_temps(d) == sorted(stale)
    assert sorted(os.listdir(d)) == ["notes.tmp-x", "train"]
