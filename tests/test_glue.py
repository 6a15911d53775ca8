"""The GLUE suite runner (bertjax/glue.py): results files, submissions, sweeps, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_finetune import POOL, _read_tsv, _write, write_sst2

from bertjax import checkpoint as ckpt
from bertjax import finetune as ft
from bertjax import glue, glue_metrics, glue_task
from bertjax.main import glue_task_config

MNLI_TRAIN_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse",
    "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
    "label1", "gold_label",
]  # fmt: skip
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def _pair(rng: np.random.Generator, i: int) -> tuple[str, str, str]:
    """Premise, hypothesis, label: the hypothesis holds "cat" (entailment), "dog" (neutral) or
    neither (contradiction)."""
    label = MNLI_LABELS[i % 3]
    hyp = [str(w) for w in rng.choice(POOL, 4)]
    if label != "contradiction":
        hyp.insert(2, "cat" if label == "entailment" else "dog")
    return " ".join(str(w) for w in rng.choice(POOL, 6)), " ".join(hyp), label


def write_mnli(data_dir: str, n_train: int, n_dev: int, n_test: int, n_ax: int) -> None:
    rng = np.random.default_rng(1)

    def row(i: int, labels: int | None) -> list[str]:
        a, b, label = _pair(rng, i)
        meta = [str(i), f"{i}1", f"{i}1e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)"]
        return meta + [a, b] + ([label] * labels if labels else [])

    d = f"{data_dir}/MNLI"
    _write(f"{d}/train.tsv", MNLI_TRAIN_HEADER, [row(i, 2) for i in range(n_train)])
    for split in ("matched", "mismatched"):
        _write(f"{d}/dev_{split}.tsv", MNLI_DEV_HEADER, [row(i, 6) for i in range(n_dev)])
        _write(f"{d}/test_{split}.tsv", MNLI_TEST_HEADER, [row(i, None) for i in range(n_test)])
    ax = [[str(i), *_pair(rng, i)[:2]] for i in range(n_ax)]
    _write(f"{data_dir}/diagnostic/diagnostic.tsv", ["index", "sentence1", "sentence2"], ax)


def write_cola(data_dir: str, n_train: int, n_dev: int, n_test: int) -> None:
    """CoLA files (train/dev without header): acceptable iff the sentence has "good"."""
    rng = np.random.default_rng(2)

    def row(i: int) -> tuple[str, str]:
        words = [str(w) for w in rng.choice(POOL, 5)]
        if i % 2:
            words.insert(1, "good")
        return str(i % 2), " ".join(words) + "."

    for name, n in (("train", n_train), ("dev", n_dev)):
        _write(
            f"{data_dir}/CoLA/{name}.tsv", None, [["gj04", y, "", s] for y, s in map(row, range(n))]
        )
    _write(
        f"{data_dir}/CoLA/test.tsv",
        ["index", "sentence"],
        [[str(i), row(i)[1]] for i in range(n_test)],
    )


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("glue_data"))
    write_cola(d, n_train=48, n_dev=20, n_test=6)
    write_mnli(d, n_train=48, n_dev=18, n_test=5, n_ax=7)
    return d


def _suite(bertjax_dir, glue_dir, workdir, **kw):
    args = dict(
        tasks=["cola", "mnli", "ax"],
        data_dir=glue_dir,
        workdir=workdir,
        max_train_examples=32,
        num_epochs=1,
        batch_size=16,
        max_seq_length=16,
        config_overrides={"train.log_every": 1},
    )
    return glue.run_glue(bertjax_dir, task_configs=glue_task_config, **{**args, **kw})


@pytest.mark.slow
def test_run_glue_end_to_end(bertjax_dir, glue_dir, tmp_path, capsys):
    work = str(tmp_path / "suite")
    out = _suite(bertjax_dir, glue_dir, work)

    # glue_results.json: {"tasks": {...}, "average": ...} in percent.
    with open(os.path.join(work, glue.RESULTS_JSON)) as f:
        saved = json.load(f)
    assert set(saved) == {"tasks", "average"}
    assert list(saved["tasks"]) == ["cola", "mnli"]  # AX is predicted, not scored
    assert set(saved["tasks"]["cola"]) == {"matthews_corrcoef"}
    assert set(saved["tasks"]["mnli"]) == {"accuracy_m", "accuracy_mm"}
    for metrics in saved["tasks"].values():
        assert all(-100.0 <= v <= 100.0 for v in metrics.values())
    mnli = saved["tasks"]["mnli"]
    expected = np.mean(
        [
            saved["tasks"]["cola"]["matthews_corrcoef"],
            (mnli["accuracy_m"] + mnli["accuracy_mm"]) / 2,
        ]
    )
    assert saved["average"] == pytest.approx(expected)
    assert out["tasks"] == saved["tasks"] and out["average"] == saved["average"]

    # Markdown table, printed too.
    with open(os.path.join(work, glue.RESULTS_MD)) as f:
        md = f.read()
    assert md == glue_metrics.results_markdown(saved["tasks"])
    assert "| CoLA |" in md and "| MNLI |" in md and "GLUE score** (2 of 9 tasks)" in md
    assert md in capsys.readouterr().out

    # Run dirs and the runs file.
    assert os.path.isfile(os.path.join(work, "cola", "seed0", ft.RESULTS_FILE))
    assert ckpt.is_model_dir(os.path.join(work, "mnli", "seed0", ft.BEST_DIR))
    with open(os.path.join(work, glue.RUNS_JSON)) as f:
        runs = json.load(f)
    assert [(r["task"], r["seed"]) for r in runs["runs"]] == [("cola", 0), ("mnli", 0)]
    with open(os.path.join(work, "mnli", "seed0", ft.RESULTS_FILE)) as f:
        assert json.load(f)["num_train_examples"] == 32  # max_train_examples of 48

    # Submission files: names, headers, every id once, label strings.
    sub = os.path.join(work, "submission")
    assert sorted(os.listdir(sub)) == ["AX.tsv", "CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    assert out["submission_files"] == sorted(os.listdir(sub))
    for name, n, labels in (
        ("CoLA.tsv", 6, {"0", "1"}),
        ("MNLI-m.tsv", 5, set(MNLI_LABELS)),
        ("MNLI-mm.tsv", 5, set(MNLI_LABELS)),
        ("AX.tsv", 7, set(MNLI_LABELS)),
    ):
        rows = _read_tsv(os.path.join(sub, name))
        assert rows[0] == ["index", "prediction"], name
        assert [int(r[0]) for r in rows[1:]] == list(range(n)), name
        assert {r[1] for r in rows[1:]} <= labels, name
    # AX comes from the MNLI run's best parameters.
    mnli_run = os.path.join(work, "mnli", "seed0", glue_task.SUBMISSION_DIR, "AX.tsv")
    assert _read_tsv(mnli_run) == _read_tsv(os.path.join(sub, "AX.tsv"))

    # Running again reuses the finished runs; another config for the same dirs is refused.
    again = _suite(bertjax_dir, glue_dir, work)
    assert "reusing" in capsys.readouterr().out
    assert again["tasks"] == out["tasks"]
    with pytest.raises(ValueError, match="different config; pass overwrite=True"):
        _suite(bertjax_dir, glue_dir, work, num_epochs=2)


def test_sweep_and_seeds_choose_lr_by_median(bertjax_dir, tmp_path, monkeypatch):
    """The paper's lr grid x seeds: lr chosen by the median dev score, median reported,
    submission from the best seed at that lr. (finetune is replaced by a stub here.)"""
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=4, n_dev=4, n_test=2)
    # Accuracy by (lr, seed): 3e-5 has the best median (70) though 5e-5 has the best run (99).
    table = {
        5e-5: [99.0, 40.0, 41.0],
        4e-5: [60.0, 61.0, 62.0],
        3e-5: [70.0, 75.0, 68.0],
        2e-5: [50.0, 50.0, 50.0],
    }
    calls = []

    def fake_finetune(family, config, run_dir):
        assert family is glue_task.FAMILY
        lr, seed = config.optim.learning_rate, config.seed
        calls.append((lr, seed, run_dir, config.train.batch_size, config.train.num_epochs))
        acc = table[lr][seed]
        sub = os.path.join(run_dir, glue_task.SUBMISSION_DIR)
        path = glue_metrics.write_submission("sst2", "test", [0, 1], [seed % 2, 1], sub)
        return {"metrics": {"accuracy": acc}, "score": acc, "best_epoch": 1,
                "submission_files": {"SST-2.tsv": path}}  # fmt: skip

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    work = str(tmp_path / "suite")
    out = glue.run_glue(
        bertjax_dir, task_configs=glue_task_config, tasks="SST-2", data_dir=data, workdir=work,
        seeds=3, sweep=True,
        max_seq_length=16,
    )  # fmt: skip
    assert len(calls) == 12
    assert {(c[3], c[4]) for c in calls} == {(32, 3.0)}  # the paper's batch and epochs
    assert os.path.join(work, "sst2", "seed2", "lr3e-05") in {c[2] for c in calls}
    assert out["learning_rates"] == {"sst2": 3e-5}
    assert out["tasks"] == {"sst2": {"accuracy": 70.0}}
    assert out["average"] == 70.0
    # The best seed at 3e-5 is seed 1 (75): its predictions (seed % 2 = 1 -> "1").
    rows = _read_tsv(os.path.join(work, "submission", "SST-2.tsv"))
    assert rows[1:] == [["0", "1"], ["1", "1"]]


def test_bad_input_fails_before_training(bertjax_dir, hf_dir, glue_dir, tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(ft, "finetune", no_training)
    work = str(tmp_path / "suite")

    def run(checkpoint=bertjax_dir, **kw):
        args = dict(tasks=["cola"], data_dir=glue_dir, workdir=work, max_seq_length=16)
        return glue.run_glue(checkpoint, task_configs=glue_task_config, **{**args, **kw})

    with pytest.raises(ValueError, match=r"unknown GLUE task\(s\) \['foo'\]"):
        run(tasks=["cola", "foo"])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        run(tasks="cola,mnlii")
    with pytest.raises(ValueError, match="ax is predicted with the MNLI model"):
        run(tasks=["ax"])
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"GLUE data directory not found: {missing}"):
        run(data_dir=missing)
    with pytest.raises(FileNotFoundError, match="GLUE RTE directory not found: .*RTE"):
        run(tasks=["rte"])
    partial = tmp_path / "partial"
    write_cola(str(partial), 2, 2, 0)
    os.remove(partial / "CoLA" / "dev.tsv")
    with pytest.raises(FileNotFoundError, match="CoLA validation file not found: .*dev.tsv"):
        run(data_dir=str(partial))
    with pytest.raises(ckpt.CheckpointError, match=f"{hf_dir[0]}: not a bertjax checkpoint"):
        run(checkpoint=hf_dir[0])
    with pytest.raises(ckpt.CheckpointError, match="checkpoint directory not found"):
        run(checkpoint=missing)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        run(max_seq_length=128)
    with pytest.raises(ValueError, match="either sweep=True"):
        run(sweep=True, learning_rate=3e-5)
    with pytest.raises(ValueError, match="no field 'nope'"):
        run(config_overrides={"train.nope": 1})
    with pytest.raises(ValueError, match="seeds=0"):
        run(seeds=0)
    assert not os.path.exists(work)


def test_resolve_tasks():
    assert glue.resolve_tasks("all") == (list(glue.GLUE_TASKS), False)
    assert glue.resolve_tasks("SST-2, mnli,AX") == (["sst2", "mnli"], True)
    assert glue.resolve_tasks(["rte", "cola"]) == (["cola", "rte"], False)


def test_a_failing_task_does_not_stop_the_others(bertjax_dir, tmp_path, monkeypatch):
    """RTE's files are missing and SST-2's training hits a malformed row: CoLA still runs, and
    the summary (JSON and Markdown) names the failed tasks with the reason."""
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=4, n_dev=4, n_test=0)
    write_cola(data, 2, 2, 0)
    write_mnli(data, 3, 3, 0, 0)
    os.remove(os.path.join(data, "diagnostic", "diagnostic.tsv"))

    def fake_finetune(family, config, run_dir):
        assert family is glue_task.FAMILY
        if config.task.name == "mnli":
            return {"metrics": {"accuracy_m": 80.0, "accuracy_mm": 82.0}, "score": 81.0,
                    "best_epoch": 1, "submission_files": {}}  # fmt: skip
        if config.task.name == "sst2":
            raise ValueError(f"{data}/SST-2/train.tsv:3: label 'maybe' is not one of ('0', '1')")
        return {"metrics": {"matthews_corrcoef": 42.0}, "score": 42.0, "best_epoch": 1,
                "submission_files": {}}  # fmt: skip

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    work = str(tmp_path / "suite")
    out = glue.run_glue(bertjax_dir, task_configs=glue_task_config,
                        tasks=["cola", "sst2", "rte", "mnli", "ax"], data_dir=data,
                        workdir=work, max_seq_length=16)  # fmt: skip
    assert out["tasks"] == {"cola": {"matthews_corrcoef": 42.0},
                            "mnli": {"accuracy_m": 80.0, "accuracy_mm": 82.0}}  # fmt: skip
    assert set(out["failed"]) == {"sst2", "rte", "ax"}
    assert "diagnostic.tsv" in out["failed"]["ax"]
    assert (
        "train.tsv:3" in out["failed"]["sst2"] and "RTE directory not found" in out["failed"]["rte"]
    )
    saved = json.load(open(os.path.join(work, "glue_results.json")))
    assert saved["failed"] == out["failed"] and saved["tasks"] == out["tasks"]
    assert saved["average"] == (42.0 + 81.0) / 2
    md = open(os.path.join(work, "glue_results.md")).read()
    assert "Failed tasks" in md and "- rte:" in md


def test_problem_tasks_are_named_before_any_training(bertjax_dir, tmp_path, monkeypatch, capsys):
    """SST-2's dev file has only a header and RTE's files are missing: both are named, one
    line each, before the trainer is first called; CoLA runs. With no task left, the suite
    stops before any training, naming them all."""
    data = str(tmp_path / "glue")
    write_sst2(data, n_train=4, n_dev=0, n_test=0)
    write_cola(data, 4, 4, 0)
    calls = []

    def fake_finetune(family, config, run_dir):
        assert family is glue_task.FAMILY
        calls.append((config.task.name, capsys.readouterr()))
        return {"metrics": {"matthews_corrcoef": 42.0}, "score": 42.0, "best_epoch": 1,
                "submission_files": {}}  # fmt: skip

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    run = lambda tasks: glue.run_glue(bertjax_dir, task_configs=glue_task_config, tasks=tasks,
                                      data_dir=data, workdir=str(tmp_path / "suite"),
                                      max_seq_length=16)  # fmt: skip
    out = run(["rte", "sst2", "cola"])
    ((task, before),) = calls
    sst2_dev = os.path.join(data, "SST-2", "dev.tsv")
    assert task == "cola" and "[1/1] cola seed 0" in before.out
    assert [line for line in before.err.splitlines() if line.startswith("GLUE ")] == [
        f"GLUE sst2: skipped: {sst2_dev}: no SST-2 validation examples (only a header, no rows)",
        f"GLUE rte: skipped: GLUE RTE directory not found: {data}/RTE (task rte)",
    ]
    assert set(out["failed"]) == {"sst2", "rte"} and set(out["tasks"]) == {"cola"}

    calls.clear()
    with pytest.raises(glue.GlueSuiteError) as e:
        run(["sst2", "rte"])
    assert not calls
    assert str(e.value).startswith("no GLUE task can run: sst2: " + sst2_dev)
    assert "; rte: GLUE RTE directory not found" in str(e.value)


def test_cli_exits_1_when_a_task_was_skipped(bertjax_dir, tmp_path, monkeypatch, capsys):
    """`bertjax glue` writes the summary of the tasks that ran, then exits 1 naming the ones
    skipped (missing data) or failed; with none of them, it exits 0."""
    from bertjax.main import main

    data = str(tmp_path / "glue")
    write_cola(data, 4, 4, 0)

    def fake_finetune(family, config, run_dir):
        return {"metrics": {"matthews_corrcoef": 42.0}, "score": 42.0, "best_epoch": 1,
                "submission_files": {}}  # fmt: skip

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    work = tmp_path / "suite"

    def run(tasks):
        with pytest.raises(SystemExit) as e:
            main(["bertjax", "glue", "--checkpoint", bertjax_dir, "--data_dir", data,
                  "--workdir", str(work), "--tasks", tasks, "--max_seq_length=16"])  # fmt: skip
        return e.value.code, capsys.readouterr().err

    code, err = run("cola,rte")
    assert code == 1, err
    assert err.splitlines()[-1] == "bertjax glue: error: task(s) skipped or failed: rte"
    assert json.load(open(work / "glue_results.json"))["tasks"] == {
        "cola": {"matthews_corrcoef": 42.0}
    }
    assert run("cola")[0] == 0


def test_a_suite_in_use_is_refused(bertjax_dir, tmp_path, monkeypatch):
    """A second suite in a workdir another run holds stops at once, one line; the lock is
    released when a run ends, so the next one runs."""
    from bertjax import storage

    data = str(tmp_path / "glue")
    write_cola(data, 4, 4, 0)
    monkeypatch.setattr(ft, "finetune", lambda family, config, run_dir: {
        "metrics": {"matthews_corrcoef": 1.0}, "score": 1.0, "best_epoch": 1})  # fmt: skip
    work = str(tmp_path / "suite")
    run = lambda: glue.run_glue(bertjax_dir, task_configs=glue_task_config, tasks=["cola"],
                                data_dir=data, workdir=work, max_seq_length=16)  # fmt: skip
    with storage.workdir_lock(work):
        with pytest.raises(storage.WorkdirInUseError) as e:
            run()
    assert str(e.value) == (
        f"{work} is in use by another run (lock {work}/.lock held); wait for it or use another "
        "--workdir"
    )
    assert run()["tasks"] == {"cola": {"matthews_corrcoef": 1.0}}
