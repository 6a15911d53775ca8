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
    assert code == 1 and "not a bertjax checkpoint" in err


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
    assert err.splitlines() == [err.strip()] and err.startswith(f"bertjax vocab: error: {bad}:4: ")

    code, _, err = _run(
        ["vocab", "--input", bad, "--out", out, *kind, "--input_errors=replace"], capsys
    )
    assert code == 0, err
    assert err.strip() == (
        f"bertjax vocab: warning: {bad}:4: invalid UTF-8 bytes replaced by U+FFFD "
        "(1 line(s) in this file)"
    )
    tok = load_tokenizer(out)
    assert not [p for p in tok.convert_ids_to_tokens(range(tok.vocab_size)) if "\ufffd" in p]


def _error_line(err: str, command: str) -> str:
    """The one error line of stderr (progress bars aside); no traceback."""
    lines = [x for x in err.splitlines() if x.startswith(f"bertjax {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err and err.endswith(lines[0] + "\n"), err
    return lines[0]


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
        from bertjax.features import _layer_indexes

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
    assert err.splitlines()[0] == (
        "bertjax finetune: unknown config key train.batchsize "
        '(\'batchsize\'; Did you mean "batch_size" instead of "batchsize"?)'
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
