"""The `bertjax` command line: dispatch, flag errors, and the convert/features commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bertjax.main import main


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
