"""The `bertjax` command line: dispatch, flag errors, one-line input errors, convert/features."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from bertjax import main as main_module
from bertjax.main import is_user_error, main
from data_pipelines.corpus import CorpusError
from data_pipelines.tokenizers import TokenizerFileError, load_tokenizer


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bertjax", *argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_usage_and_unknown_command(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0 and "convert" in out and "features" in out
    code, _, err = _run(["frobnicate"], capsys)
    assert code == 2 and "unknown command 'frobnicate'" in err


def test_flag_errors_exit_nonzero(capsys):
    code, _, err = _run(["convert", "--src", "x"], capsys)
    assert code == 2 and "--out" in err
    code, _, err = _run(["convert", "--src", "x", "--out", "y"], capsys)
    assert code == 1 and "exactly one of --from" in err


def test_convert_import_export_and_features(hf_dir, tmp_path, capsys):
    ck = str(tmp_path / "ck")
    code, out, err = _run(["convert", "--from", "hf", "--src", hf_dir[0], "--out", ck], capsys)
    assert code == 0, err
    assert os.path.isfile(os.path.join(ck, "bertjax_config.json"))
    code, _, err = _run(["convert", "--from", "hf", "--src", hf_dir[0], "--out", ck], capsys)
    assert code == 1 and "pass --overwrite" in err
    hf_out = str(tmp_path / "hf")
    code, _, err = _run(["convert", "--to", "hf", "--src", ck, "--out", hf_out], capsys)
    assert code == 0, err
    assert json.load(open(os.path.join(hf_out, "config.json")))["architectures"] == [
        "BertForPreTraining"
    ]
    inp = tmp_path / "s.txt"
    inp.write_text("the cat sat\n")
    feats = str(tmp_path / "f.jsonl")
    code, _, err = _run(
        [
            "features",
            "--checkpoint",
            ck,
            "--input",
            str(inp),
            "--output",
            feats,
            "--layers",
            "-1,-2",
            "--max_seq_length",
            "8",
        ],
        capsys,
    )
    assert code == 0, err
    rec = json.loads(open(feats).read())
    assert set(rec["layers"]) == {"-1", "-2"} and len(rec["tokens"]) == 5
    code, _, err = _run(
        [
            "features",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "g.jsonl"),
        ],
        capsys,
    )
    assert code == 1 and f"{tmp_path / 'nope'}: no such file or directory" in err


def _bad_corpus(tmp_path) -> str:
    """Text whose 4th line holds the byte 0xD7 alone (not UTF-8)."""
    rng = random.Random(0)
    words = "the a of cat dog sat mat hello world model data text token word piece".split()
    lines = [" ".join(rng.choices(words, k=rng.randint(4, 12))).encode() for _ in range(300)]
    lines[3] = b"the cat \xd7 sat"
    lines[150] = b""  # two documents
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


VOCAB_KINDS = [
    ["--kind", "wordpiece", "--vocab_size", "120", "--num_unused", "0"],
    ["--kind", "sentencepiece", "--vocab_size", "40", "--num_unused", "0"],
]


@pytest.mark.parametrize("kind", VOCAB_KINDS, ids=["wordpiece", "sentencepiece"])
def test_vocab_invalid_utf8_is_one_line_naming_file_and_line(tmp_path, capsys, kind):
    bad = _bad_corpus(tmp_path)
    out = str(tmp_path / "v")
    code, _, err = _run(["vocab", "--input", bad, "--out", out, *kind], capsys)
    assert code == 1 and not os.path.exists(out)
    assert _error_line(err, "vocab").startswith(f"bertjax vocab: error: {bad}:4: ")
    assert _without_bars(err, "vocab (") == [_error_line(err, "vocab")]

    code, _, err = _run(
        ["vocab", "--input", bad, "--out", out, *kind, "--input_errors=replace"], capsys
    )
    assert code == 0, err
    assert _without_bars(err, "vocab (") == [
        f"bertjax vocab: warning: {bad}:4: invalid UTF-8 bytes replaced by U+FFFD "
        "(1 line(s) in this file)"
    ]
    tok = load_tokenizer(out)
    assert not [p for p in tok.convert_ids_to_tokens(range(tok.vocab_size)) if "\ufffd" in p]


def _error_line(err: str, command: str) -> str:
    """The one error line of stderr (progress bars aside); no traceback."""
    lines = [x for x in err.splitlines() if x.startswith(f"bertjax {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err and err.endswith(lines[0] + "\n"), err
    return lines[0]


def _without_bars(err: str, *bars: str) -> list[str]:
    """The lines of stderr other than the states of the progress bars named `bars` (a bar
    redraws itself after a carriage return, each state starting with its name)."""
    return [x for x in err.replace("\r", "\n").splitlines() if x.strip() and not x.startswith(bars)]


def test_features_invalid_utf8_is_one_line_naming_file_and_line(bertjax_dir, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat\nthe dog ||| sat\n\nhello \xd7 world\n")
    out = str(tmp_path / "f.jsonl")
    argv = ["features", "--checkpoint", bertjax_dir, "--input", str(bad), "--output", out]
    argv += ["--layers", "-1", "--max_seq_length", "16"]
    code, _, err = _run(argv, capsys)
    assert code == 1 and not os.path.exists(out)
    assert _error_line(err, "features").startswith(f"bertjax features: error: {bad}:4: invalid")
    code, _, err = _run([*argv, "--input_errors", "ignore"], capsys)
    assert code == 0, err
    assert f"bertjax features: warning: {bad}:4: invalid UTF-8 bytes dropped" in err
    records = [json.loads(x) for x in open(out)]
    assert [r["tokens"] for r in records][2:] == [
        ["[CLS]", "[SEP]"],
        ["[CLS]", "hello", "world", "[SEP]"],
    ]


def test_prepare_invalid_utf8_is_one_line_naming_file_and_line(bertjax_dir, tmp_path, capsys):
    bad = _bad_corpus(tmp_path)
    out = str(tmp_path / "d")
    argv = ["prepare", "--input", bad, "--vocab", bertjax_dir, "--output", out]
    argv += ["--num_workers", "1", "--dupe_factor", "1"]
    code, _, err = _run(argv, capsys)
    assert code == 1 and not os.path.exists(out)
    assert _error_line(err, "prepare").startswith(f"bertjax prepare: error: {bad}:4: invalid")
    code, _, err = _run([*argv, "--input_errors", "replace"], capsys)
    assert code == 0, err
    assert f"bertjax prepare: warning: {bad}:4: invalid UTF-8 bytes replaced" in err


def _raise_in(module: str, source: str) -> BaseException:
    """The exception `source` raises when run as code of `module`."""
    try:
        exec(compile(source, f"<{module}>", "exec"), {"__name__": module})
    except BaseException as e:
        return e
    raise AssertionError("no exception")


def test_user_errors_and_bugs_are_told_apart():
    # Raised on purpose by bertjax's code, or one of its error classes: the user's input.
    assert is_user_error(_raise_in("bertjax.x", "raise ValueError('--x=3: must be even')"))
    assert is_user_error(_raise_in("data_pipelines.x", "raise ValueError('bad') from None"))
    assert is_user_error(CorpusError("f.txt:4: invalid UTF-8"))
    assert is_user_error(TokenizerFileError("vocab.txt:2: empty line"))
    assert is_user_error(FileNotFoundError("no such file"))
    # A ValueError that bertjax's code did not raise itself: a bug (traceback kept).
    assert not is_user_error(_raise_in("bertjax.x", "a, b = [1, 2, 3]"))
    assert not is_user_error(_raise_in("bertjax.x", "int('twelve')"))
    assert not is_user_error(_raise_in("numpy.x", "raise ValueError('shapes do not match')"))
    assert not is_user_error(_raise_in("bertjax.x", "import json; json.loads('{')"))
    assert not is_user_error(_raise_in("bertjax.x", "b'\\xd7'.decode('utf-8')"))
    assert not is_user_error(ValueError("never raised: no traceback"))
    assert not is_user_error(RuntimeError("not an input error"))


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    define = main_module.COMMANDS["smoke"][0]

    def buggy(fv):
        np.zeros(3).reshape(2)  # numpy's ValueError, from a bug

    def checked(fv):
        from bertjax.extract_features import _layer_indexes

        _layer_indexes([5], num_layers=2)  # bertjax's own check of a value

    monkeypatch.setitem(main_module.COMMANDS, "smoke", (define, buggy, ""))
    with pytest.raises(ValueError, match="cannot reshape"):
        main(["bertjax", "smoke"])
    monkeypatch.setitem(main_module.COMMANDS, "smoke", (define, checked, ""))
    code, _, err = _run(["smoke"], capsys)
    assert code == 1 and err == (
        "bertjax smoke: error: --layers: layer 5 is out of range for a 2-layer model "
        "(valid: -2..1)\n"
    )


def test_console_script_smoke_runs():
    """The installed `bertjax` entry point runs the smoke job end to end."""
    exe = os.path.join(os.path.dirname(sys.executable), "bertjax")
    res = subprocess.run(
        [exe, "smoke", "--seq_len", "32", "--batch_size", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    loss_line = [x for x in res.stdout.splitlines() if x.startswith("loss=")][0]
    mlm = float(loss_line.split("mlm_loss=")[1].split()[0])
    assert 6.0 < mlm < 8.0  # ~ln(1024) for a fresh model over a 1024-token vocab


def test_outputs_never_replace_their_inputs(bertjax_dir, tmp_path, capsys):
    """--overwrite replaces an output, never the input it is made from."""
    import shutil

    ck = str(tmp_path / "ck")
    shutil.copytree(bertjax_dir, ck)
    before = sorted(os.listdir(ck))
    for out in (ck, str(tmp_path)):  # the source itself, and a directory holding it
        code, _, err = _run(
            ["convert", "--to", "hf", "--src", ck, "--out", out, "--overwrite"], capsys
        )
        assert code == 1 and "would replace the input" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(ck)) == before

    text = tmp_path / "s.txt"
    text.write_text("the cat sat\n")
    code, _, err = _run(
        [
            "features",
            "--checkpoint",
            ck,
            "--input",
            str(text),
            "--output",
            str(text),
            "--overwrite",
        ],
        capsys,
    )
    assert code == 1 and "would replace the input" in err
    assert text.read_text() == "the cat sat\n"
    for flags, message in (
        (["--output", str(tmp_path)], "is a directory"),
        (["--output", str(tmp_path / "f.jsonl"), "--layers", ""], "--layers is empty"),
        (["--output", str(tmp_path / "f.jsonl"), "--batch_size", "0"], "--batch_size=0"),
    ):
        argv = ["features", "--checkpoint", ck, "--input", str(text), "--max_seq_length", "32"]
        code, _, err = _run([*argv, *flags], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err

    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "corpus.txt"
    corpus.write_text("the cat sat .\nthe dog ran .\n\nhello world .\nhe was fast .\n")
    code, _, err = _run(
        ["prepare", "--input", str(corpus), "--vocab", ck, "--output", str(data), "--overwrite",
         "--num_workers", "1"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "holds the input file" in err
    assert corpus.read_text().startswith("the cat sat")


def test_stray_arguments_and_bad_smoke_sizes_are_refused(capsys):
    code, _, err = _run(["smoke", "stray", "--size", "tiny"], capsys)
    assert code == 2 and "unexpected argument(s) ['stray']" in err
    for flags in (["--seq_len", "0"], ["--batch_size", "0"]):
        code, _, err = _run(["smoke", *flags], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "--seq_len" in err, err


# --- Experiment configs by name ------------------------------------------------------------------


def test_shipped_configs_resolve_by_name(tmp_path, capsys, monkeypatch):
    import experiments

    root = os.path.dirname(experiments.__file__)
    shipped = main_module.shipped_configs()
    assert {"pretrain/bert_base", "pretrain/tiny_demo", "glue/mrpc", "squad/v1"} <= set(shipped)
    assert not any(n.endswith(("/common", "/__init__")) for n in shipped)
    resolve = main_module.resolve_config
    assert resolve("bert_base:phase1") == os.path.join(root, "pretrain", "bert_base.py:phase1")
    assert resolve("glue/mrpc") == os.path.join(root, "glue", "mrpc.py")
    assert resolve("pretrain/bert_large.py:phase2") == os.path.join(
        root, "pretrain", "bert_large.py:phase2"
    )
    monkeypatch.chdir(os.path.dirname(root))
    assert resolve("experiments/glue/rte.py") == "experiments/glue/rte.py"  # a path: as is
    monkeypatch.chdir(tmp_path)
    assert resolve("experiments/glue/rte.py") == os.path.join(root, "glue", "rte.py")

    # A config loaded by name reaches the command (here: its missing init checkpoint).
    code, _, err = _run(
        ["finetune", "--config", "glue/mrpc", "--workdir", str(tmp_path / "w"),
         f"--config.init_checkpoint={tmp_path / 'none'}", f"--config.task.data_dir={tmp_path}"],
        capsys,
    )  # fmt: skip
    assert code == 1 and str(tmp_path / "none") in err and len(err.strip().splitlines()) == 1

    for argv in (
        ["train", "--config", "no/such.py:phase1", "--workdir", "w"],
        ["finetune", "--config=bert_nope", "--workdir", "w"],
    ):
        code, _, err = _run(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "shipped:" in err and "glue/mrpc" in err and "pretrain/bert_base" in err
        assert "Traceback" not in err


def test_config_key_typos_packing_on_token_tasks_and_a_cache_file_are_one_line(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # the flag decides
    glue = ["finetune", "--config", "glue/sst2", "--workdir", str(tmp_path / "w")]
    code, _, err = _run([*glue, "--config.train.batchsize=8"], capsys)
    assert code == 2
    assert err == (
        "bertjax finetune: unknown config key train.batchsize (did you mean train.batch_size?)\n"
    )
    code, _, err = _run(["finetune", "--config", "glue/mrpc:abc", "--workdir", "w"], capsys)
    assert code == 2 and err.splitlines()[0].endswith(
        "mrpc.py:abc: ValueError: could not convert string to float: 'abc'"
    ), err
    code, _, err = _run([*glue, "--config.trian.batch_size=8"], capsys)
    assert code == 2 and "unknown config key trian.batch_size" in err and "\\n" not in err
    # NER and SQuAD configs have the packing key (off): a one-line error, not a KeyError.
    for name in ("ner/conll2003", "squad/v1"):
        code, _, err = _run(
            ["finetune", "--config", name, "--workdir", str(tmp_path / "w"),
             "--config.init_checkpoint", str(tmp_path / "none"), "--config.data.packing=True"],
            capsys,
        )  # fmt: skip
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("bertjax finetune: error: ") and "'packing'" not in err, err
    cache = tmp_path / "afile"
    cache.write_text("x")
    code, _, err = _run(
        ["features", "--checkpoint", str(tmp_path / "none"), "--input", str(cache),
         "--output", str(tmp_path / "o.jsonl"), f"--compilation_cache_dir={cache}"],
        capsys,
    )  # fmt: skip
    assert code == 1 and err.strip() == (
        f"bertjax features: error: compilation cache {cache}: exists and is not a directory"
    )
    assert cache.read_text() == "x"


# --- prepare under google-research/bert's flag names ---------------------------------------------


def test_prepare_takes_google_research_bert_flag_names(tmp_path, capsys):
    """create_pretraining_data.py's command line gives the records of prepare's own flags;
    missing or contradictory file flags are one line each."""
    from _data_helpers import make_documents, write_corpus, write_vocab

    text = tmp_path / "text"
    text.mkdir()
    write_corpus(text / "a.txt", make_documents(6, seed=1))
    write_corpus(text / "b1.txt", make_documents(5, seed=2))
    write_corpus(text / "b2.txt", make_documents(5, seed=3))
    vocab = write_vocab(tmp_path)
    inputs = f"{text / 'a.txt'},{text / 'b*.txt'}"  # a comma-separated list of files and globs
    common = ["--do_lower_case=True", "--max_seq_length=32", "--max_predictions_per_seq=5",
              "--random_seed=7", "--dupe_factor=2", "--masked_lm_prob=0.2",
              "--short_seq_prob=0.3", "--num_workers=1", "--num_shards=2"]  # fmt: skip
    ours, google = str(tmp_path / "ours"), str(tmp_path / "google")
    code, out, err = _run(
        ["prepare", "--input", inputs, "--vocab", vocab, "--output", ours, *common], capsys
    )
    assert code == 0, err
    code, out, err = _run(
        ["prepare", f"--input_file={inputs}", f"--output_file={google}",
         f"--vocab_file={vocab}", f"--vocab={vocab}", *common],  # the same value twice: one
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip().endswith(f"examples to {google}")
    names = sorted(os.listdir(ours))
    assert names == sorted(os.listdir(google)) and len(names) > 3
    for name in names:
        with open(os.path.join(ours, name), "rb") as a, open(os.path.join(google, name), "rb") as b:
            assert a.read() == b.read(), name

    base = ["prepare", "--vocab_file", vocab, "--output_file", str(tmp_path / "x")]
    for argv, message in (
        (
            [*base, "--input_file", str(text / "a.txt"), "--input", str(text / "b1.txt")],
            f"--input={text / 'b1.txt'} and --input_file={text / 'a.txt'} contradict each other",
        ),
        (base, "give --input (or google-research/bert's name, --input_file)"),
        (
            [
                "prepare",
                "--input_file",
                inputs,
                "--vocab_file",
                vocab,
                "--output_file",
                "out/a.tfrecord,out/b.tfrecord",
            ],
            "give one path, e.g. --output_file=out/a.tfrecord --num_shards=2",
        ),  # fmt: skip
    ):
        code, _, err = _run(argv, capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not os.path.exists(tmp_path / "x") and not os.path.exists("out")


# --- Config errors: one line for every command that takes --config --------------------------------


@pytest.mark.parametrize(
    "argv,line",
    [
        (["train", "--config", "tiny_demo", "--config.train.num_step=5"],
         "unknown config key train.num_step (did you mean train.num_steps?)"),
        (["train", "--config=bert_base:phase1", "--config.trian.batch_size=8"],
         "unknown config key trian.batch_size (did you mean train.batch_size?)"),
        (["train", "--config", "bert_large:phase2", "--config.train.num_steps.x=1"],
         "config key train.num_steps.x: train.num_steps is a value (int), not a group"),
        (["finetune", "--config", "squad/v1", "--config.task.versoin=2"],
         "unknown config key task.versoin (task has: data_dir, dev_file, doc_stride, "),
        (["finetune", "--config", "ner/conll2003", "--noconfig.model.tager"],
         "unknown config key model.tager (did you mean model.tagger?)"),
        (["finetune", "--config", "glue/mrpc", "--config.zzz=1"],
         "unknown config key zzz (the config has: data, "),
        (["train", "--config", "no/such_file.py"],
         "--config=no/such_file.py: 'no/such_file.py' is neither a file nor a shipped config"),
        (["finetune", "--config", "glue/no_such_task"],
         "--config=glue/no_such_task: 'glue/no_such_task' is neither a file nor a shipped"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line_for_every_config_command(argv, line, tmp_path, capsys):
    code, _, err = _run([*argv, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"bertjax {argv[0]}: {line}"), err
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    "argv,line",
    [
        (["train", "--config", "glue/mrpc"],
         "config: a fine-tuning config (it has a task group), not a pre-training one; run it "
         "with `bertjax finetune --config ...`"),
        (["train", "--config", "glue/mrpc", "--config.train.num_steps=3"],
         "config: a fine-tuning config (it has a task group), not a pre-training one; run it "
         "with `bertjax finetune --config ...`"),
        (["finetune", "--config", "tiny_demo"],
         "config: a pre-training config (it has no task group), not a fine-tuning one; run it "
         "with `bertjax train --config ...`"),
        (["finetune", "--config", "tiny_demo", "--config.train.num_epochs=1"],
         "config: a pre-training config (it has no task group), not a fine-tuning one; run it "
         "with `bertjax train --config ...`"),
    ],
)  # fmt: skip
def test_a_config_given_to_the_other_command_says_which_command(argv, line, tmp_path, capsys):
    # Before any override is read: a mistyped key would otherwise be reported first.
    code, _, err = _run([*argv, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and err == f"bertjax {argv[0]}: {line}\n", err
    assert not os.path.exists(tmp_path / "w")


# --- Progress bars: units, totals, and steps counted when the device has run them --------------


def _recording_tqdm(monkeypatch, *targets: str) -> list:
    """Replaces tqdm at `targets` ("module.attribute") with a subclass that records its bars;
    each bar's `shown` lists its count after every update."""
    from tqdm import tqdm

    bars = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            self.shown = []
            super().__init__(*args, **kwargs)
            bars.append(self)

        def update(self, n=1):
            out = super().update(n)
            self.shown.append(self.n)
            return out

    for target in targets:
        monkeypatch.setattr(target, Recording)
    return bars


@pytest.mark.slow
def test_pretraining_bar_and_lines_in_percent_and_counted_at_fetches(tmp_path, capsys, monkeypatch):
    from _data_helpers import make_documents, write_corpus, write_vocab

    from data_pipelines.pretraining_data import create_pretraining_data

    write_corpus(tmp_path / "train.txt", make_documents(40, seed=1))
    write_corpus(tmp_path / "eval.txt", make_documents(10, seed=2))
    vocab = write_vocab(tmp_path)
    for split in ("train", "eval"):
        create_pretraining_data(
            [str(tmp_path / f"{split}.txt")], vocab, str(tmp_path / split), max_seq_length=32,
            max_predictions_per_seq=5, dupe_factor=1, num_workers=1, progress=False,
        )  # fmt: skip
    bars = _recording_tqdm(monkeypatch, "bertjax.pretrain.tqdm")
    work = str(tmp_path / "w")
    code, out, err = _run(
        ["train", "--config", "tiny_demo", "--workdir", work,
         f"--config.data.train_dir={tmp_path / 'train'}",
         f"--config.data.eval_dir={tmp_path / 'eval'}", f"--config.data.vocab={vocab}",
         "--config.data.corpus=", "--config.model.size=custom", "--config.model.num_layers=1",
         "--config.model.hidden_size=32", "--config.model.num_heads=2",
         "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=32",
         "--config.train.num_steps=6", "--config.train.batch_size=8",
         "--config.train.log_every=2", "--config.train.eval_every=3",
         "--config.train.eval_steps=1", "--config.train.checkpoint_every=6"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    train = [r for r in records if r.get("split", "train") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    # Stored as fractions; shown in percent.
    assert all(0 <= r["mlm_accuracy"] <= 1 and 0 <= r["nsp_accuracy"] <= 1 for r in train)
    (bar,) = bars
    assert f"mlm_acc={train[-1]['mlm_accuracy']:.1%}" in bar.postfix
    assert f"nsp_acc={train[-1]['nsp_accuracy']:.1%}" in bar.postfix
    for r in evals:
        line = next(x for x in out.splitlines() if x.startswith(f"step {r['step']}: eval "))
        assert f"mlm_accuracy={100 * r['mlm_accuracy']:.2f}%" in line
        assert f"nsp_accuracy={100 * r['nsp_accuracy']:.2f}%" in line
    final = next(x for x in out.splitlines() if x.startswith("final: "))
    assert f"eval_mlm_accuracy={100 * evals[-1]['mlm_accuracy']:.2f}%" in final
    # The bar moves only where the host has waited for the device: metrics fetched (every 2
    # steps) and the evaluation (step 3), never at a step merely dispatched.
    assert sorted(set(bar.shown)) == [2, 3, 4, 6], bar.shown


@pytest.mark.slow
def test_finetuning_accuracy_in_percent_everywhere_and_counted_at_fetches(
    bertjax_dir, tmp_path, capsys, monkeypatch
):
    from test_finetune import write_sst2

    data = str(tmp_path / "glue")
    write_sst2(data, n_train=64, n_dev=32, n_test=8)
    bars = _recording_tqdm(monkeypatch, "bertjax.finetune.tqdm")
    work = str(tmp_path / "w")
    code, out, err = _run(
        ["finetune", "--config", "glue/sst2", "--workdir", work,
         f"--config.init_checkpoint={bertjax_dir}", f"--config.task.data_dir={data}",
         "--config.task.max_seq_length=16", "--config.train.batch_size=16",
         "--config.train.num_epochs=1", "--config.train.log_every=3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    train = [r for r in records if "split" not in r]
    (ev,) = [r for r in records if r.get("split") == "eval"]
    results = json.load(open(os.path.join(work, "eval_results.json")))
    assert results["metrics"]["accuracy"] == ev["accuracy"]  # percent, as before
    # Train accuracy in the same unit: percent of the window's examples (16 a step).
    assert all(0 <= r["accuracy"] <= 100 for r in train)
    assert any(r["accuracy"] > 1 for r in train)
    (bar,) = bars
    assert f"accuracy={train[-1]['accuracy']:.2f}%" in bar.postfix
    assert f"sst2 epoch 1 (step 4): accuracy={ev['accuracy']:.2f}% " in out
    assert f"best dev (epoch 1): accuracy={ev['accuracy']:.2f}%;" in out
    # 4 steps, metrics fetched at 3 and 4 (the last), the evaluation at 4.
    assert sorted(set(bar.shown)) == [3, 4], bar.shown


def test_vocab_and_features_bars_have_totals(bertjax_dir, tmp_path, capsys, monkeypatch):
    from _data_helpers import make_documents, write_corpus

    bars = _recording_tqdm(monkeypatch, "tqdm.auto.tqdm", "bertjax.extract_features.tqdm")
    text = write_corpus(tmp_path / "c.txt", make_documents(20, seed=1))
    size = os.path.getsize(text)
    for kind, passes in (("wordpiece", 3), ("sentencepiece", 1)):
        size_flags = ["--vocab_size", "120" if kind == "wordpiece" else "60"]
        code, _, err = _run(
            ["vocab", "--input", text, "--kind", kind, *size_flags, "--num_unused", "0",
             "--out", str(tmp_path / kind)],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        bar = bars.pop()
        assert bar.total == bar.n == passes * size, (kind, bar.total, bar.n)
        assert err.count(f"vocab ({passes} pass") > 0  # on stderr

    lines = tmp_path / "s.txt"
    lines.write_text("the cat sat\n\nthe dog ||| ran")  # 3 lines, the last without a newline
    code, _, err = _run(
        ["features", "--checkpoint", bertjax_dir, "--input", str(lines),
         "--output", str(tmp_path / "f.jsonl"), "--layers", "-1", "--max_seq_length", "16"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (bar,) = bars
    assert bar.total == bar.n == 3 and "features: 100%" in err.replace("\r", "\n")


# --- corpus: progress with a total and a readable summary -----------------------------------------


def test_corpus_summary_lines():
    from data_pipelines.corpus import CorpusStats

    stats = CorpusStats(
        "data/wiki", 6_458_670, 123_456_789, 20_312_345_678,
        tuple(f"data/wiki/corpus-{i:05d}-of-00064.txt" for i in range(64)),
    )  # fmt: skip
    assert main_module.corpus_summary(stats, 3 * 3600 + 12 * 60 + 5).splitlines() == [
        "corpus written:",
        "  output     data/wiki",
        "  documents  6,458,670",
        "  sentences  123,456,789 (lines)",
        "  size       20.3 GB (20,312,345,678 bytes)",
        "  files      64 (corpus-00000-of-00064.txt ... corpus-00063-of-00064.txt)",
        "  time       3 h 12 min",
    ]
    one = CorpusStats("data/pydoc.txt", 522, 40_570, 2_864_315, ("data/pydoc.txt",))
    assert main_module.corpus_summary(one, 6.04).splitlines()[4:] == [
        "  size       2.9 MB (2,864,315 bytes)",
        "  files      1 (pydoc.txt)",
        "  time       6.0 s",
    ]


def test_corpus_command_tfds_bar_total_and_summary(tmp_path, capsys, monkeypatch):
    from test_corpus_sources import WIKI, _mock_wikipedia

    bars = _recording_tqdm(monkeypatch, "tqdm.auto.tqdm")
    out_dir = tmp_path / "wiki"
    with _mock_wikipedia(WIKI):
        code, out, err = _run(
            ["corpus", "--source", "tfds:wikipedia/20230601.en", "--out", str(out_dir),
             "--num_shards", "2"],
            capsys,
        )  # fmt: skip
    assert code == 0, err
    (bar,) = bars
    assert bar.total == bar.n == len(WIKI)  # the split's examples, the empty one included
    size = sum(os.path.getsize(out_dir / f) for f in os.listdir(out_dir))
    lines = out.splitlines()
    assert lines[:5] == [
        "corpus written:",
        f"  output     {out_dir}",
        "  documents  3",
        "  sentences  7 (lines)",
        f"  size       {size} B ({size:,} bytes)",
    ]
    assert lines[5] == "  files      2 (corpus-00000-of-00002.txt ... corpus-00001-of-00002.txt)"
    assert lines[6].startswith("  time       ") and len(lines) == 7


@pytest.mark.slow
def test_corpus_command_embedded_bar_total_and_summary(tmp_path, capsys):
    out = tmp_path / "pydoc.txt"
    code, stdout, err = _run(["corpus", "--source", "embedded", "--out", str(out)], capsys)
    assert code == 0, err
    states = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("embedded corpus")]
    total = states[-1].split("/")[1].split()[0]
    assert f" {total}/{total} " in states[-1] and int(total) > 100
    text = out.read_text(encoding="utf-8")
    assert stdout.splitlines()[:4] == [
        "corpus written:",
        f"  output     {out}",
        f"  documents  {text.count(chr(10) * 2) + 1:,}",
        f"  sentences  {len([x for x in text.splitlines() if x]):,} (lines)",
    ]


# --- Start-up noise ------------------------------------------------------------------------------

_PROBE = """
import logging, sys
from jax._src import xla_bridge

def unavailable():
    raise RuntimeError("no such chip on this machine")

# A platform that fails to start, as the TPU one does on a GPU or CPU machine with libtpu.
xla_bridge.register_backend_factory("probe", unavailable, priority=-100, fail_quietly=True)
from bertjax import main

define, _, doc = main.COMMANDS["smoke"]

def devices(fv):
    import jax

    print(jax.devices(), "probe" in xla_bridge._backend_errors)
    logging.getLogger("jax._src.xla_bridge").warning("a real warning stays")

main.COMMANDS["smoke"] = (define, devices, doc)
main.main(["bertjax", "smoke"])
"""


def test_backend_probing_is_not_printed_but_warnings_are():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # JAX probes them all
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("True")  # the probe failed, logged at INFO ...
    assert "Unable to initialize backend" not in res.stderr  # ... which is not shown
    assert "a real warning stays" in res.stderr


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_outside_training_removes_temporary_outputs(signum, tmp_path, capsys, monkeypatch):
    """SIGTERM or Ctrl-C while a command writes a directory (here `prepare`'s, stopped
    mid-write): one line, exit 143 / 130, no traceback, and no `.tmp-` directory left."""
    import signal

    from bertjax import storage

    out = tmp_path / "examples"

    def run(fv):
        def write(tmp):
            open(os.path.join(tmp, "shard-0"), "w").close()
            os.kill(os.getpid(), getattr(signal, signum))

        storage.publish_dir(str(out), write, overwrite=False)

    define = main_module.COMMANDS["prepare"][0]
    monkeypatch.setitem(main_module.COMMANDS, "prepare", (define, run, ""))
    argv = ["prepare", "--input", "x.txt", "--vocab", "v", "--output", str(out)]
    # A process started in the background by a non-interactive shell (`make test &`, nohup)
    # inherits SIGINT ignored, and Python then keeps it ignored: give this test Python's
    # usual Ctrl-C, as a terminal user has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = _run(argv, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    word = "terminated" if signum == "SIGTERM" else "interrupted"
    assert (code, err.strip()) == (143 if signum == "SIGTERM" else 130, f"bertjax prepare: {word}")
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command


def test_ctrl_c_twice_stops_prepare_with_workers_cleanly(tmp_path):
    """Two Ctrl-C to the whole process group while `prepare` runs 2 worker processes: exit
    130 with one line, no traceback (the workers ignore the signal), no hang, nothing left
    (output, temporary directory, the workers' context file)."""
    import signal
    import time

    from tests import _data_helpers as h

    corpus = h.write_corpus(tmp_path / "corpus.txt", h.make_documents(15_000, seed=3))
    vocab = h.write_vocab(tmp_path)
    out = tmp_path / "examples"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # A suite started in the background (nohup, `make test &`) has SIGINT ignored, which a
    # child inherits; the command gets Python's usual Ctrl-C handler, as at a terminal.
    start = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from bertjax.main import main; main(['bertjax', *sys.argv[1:]])"
    )
    cmd = [
        *(sys.executable, "-c", start),
        *("prepare", "--input", corpus, "--vocab", vocab, "--output", str(out)),
        *("--num_workers", "2", "--dupe_factor", "10"),
    ]
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    seen = b""
    while b"pretraining data" not in seen:  # the progress bar: reading has begun
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = (seen + err).decode(errors="replace")
    # 130, or killed by the second SIGINT once the first one's cleanup is done: the shell
    # shows 130 for both.
    assert proc.returncode in (130, -signal.SIGINT), err
    assert err.strip().splitlines()[-1].endswith("bertjax prepare: interrupted"), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "tmp", "vocab.txt"]
    assert os.listdir(tmp) == []


def test_prepare_from_a_vocab_file_does_not_import_jax(tmp_path):
    # JAX's gc callback swallows a KeyboardInterrupt that lands in it: a command that does
    # not need JAX does not load it.
    from tests import _data_helpers as h

    corpus = h.write_corpus(tmp_path / "corpus.txt", h.make_documents(30, seed=1))
    vocab = h.write_vocab(tmp_path)
    code = (
        "import sys\nfrom bertjax import main\n"
        "try:\n"
        f"    main.main(['bertjax', 'prepare', '--input', {corpus!r}, '--vocab', {vocab!r},"
        f" '--output', {str(tmp_path / 'out')!r}, '--dupe_factor', '1'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('jax' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False", res.stdout
    assert os.path.isdir(tmp_path / "out")
