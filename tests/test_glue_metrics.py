"""GLUE metrics, scores, results tables and submission files (bertjax/glue_metrics.py)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from bertjax import glue_metrics as gm

# A binary confusion matrix: TP=3, FN=2, FP=1, TN=2.
LABELS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 1, 0, 0]
MCC = (3 * 2 - 1 * 2) / math.sqrt((3 + 1) * (3 + 2) * (2 + 1) * (2 + 2))  # 4 / sqrt(240)
F1 = 2 * 3 / (2 * 3 + 1 + 2)  # 2 TP / (2 TP + FP + FN), positive class 1
ACC = 5 / 8

# Leaderboard-style results with easy numbers; the GLUE score is worked out by hand below.
RESULTS = {
    "cola": {"matthews_corrcoef": 50.0},
    "sst2": {"accuracy": 90.0},
    "mrpc": {"f1": 80.0, "accuracy": 70.0},  # task score 75
    "stsb": {"pearson": 86.0, "spearman": 84.0},  # 85
    "qqp": {"f1": 70.0, "accuracy": 90.0},  # 80
    "mnli": {"accuracy_m": 84.0, "accuracy_mm": 82.0},  # 83
    "qnli": {"accuracy": 90.0},
    "rte": {"accuracy": 66.0},
    "wnli": {"accuracy": 65.0},
    "ax": {"matthews_corrcoef": 10.0},  # never counts
}
GLUE = (50 + 90 + 75 + 85 + 80 + 83 + 90 + 66 + 65) / 9  # 76.0


# ----------------------------------------------------------------------------------------------
# Metrics.


@pytest.mark.filterwarnings("error")
def test_binary_metrics_by_hand():
    assert gm.compute_metrics("cola", PREDS, LABELS) == {
        "matthews_corrcoef": pytest.approx(100 * MCC)
    }
    got = gm.compute_metrics("mrpc", PREDS, LABELS)
    assert got == {"f1": pytest.approx(100 * F1), "accuracy": pytest.approx(100 * ACC)}
    assert list(got) == ["f1", "accuracy"]
    # F1 is of class 1: F1 of class 0 would be 2*2 / (2*2 + 2 + 1) = 57.14.
    assert gm.compute_metrics("qqp", PREDS, LABELS)["f1"] == pytest.approx(66.6667, abs=1e-3)
    assert gm.compute_metrics("sst2", PREDS, LABELS) == {"accuracy": 62.5}
    # Class scores [N, C] are reduced with argmax.
    logits = np.eye(2)[PREDS] * 3.0 - 1.0
    assert gm.compute_metrics("rte", logits, LABELS) == {"accuracy": 62.5}


@pytest.mark.filterwarnings("error")
def test_multiclass_and_mnli_keys():
    # AX (R3 = multi-class Matthews): c=3 correct of s=4, predicted counts p=[1,1,2], true t=[2,1,1]
    # (c*s - sum p*t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (12 - 5) / sqrt(10 * 10) = 0.7
    assert gm.compute_metrics("ax", [0, 1, 2, 2], [0, 1, 2, 0]) == {
        "matthews_corrcoef": pytest.approx(70.0)
    }
    m = gm.compute_metrics("mnli", [0, 1, 2, 2], [0, 1, 2, 0], split="validation_matched")
    mm = gm.compute_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 1], split="validation_mismatched")
    assert m == {"accuracy_m": 75.0} and mm == {"accuracy_mm": 50.0}
    with pytest.raises(ValueError, match="pass split="):
        gm.compute_metrics("mnli", [0], [0])
    assert gm.compute_metrics("rte", [0], [0], split="validation") == {"accuracy": 100.0}


@pytest.mark.filterwarnings("error")
def test_regression_metrics_by_hand():
    preds, labels = [1.0, 2.0, 3.0, 4.0], [1.0, 9.0, 4.0, 16.0]
    # Pearson: dx = (-1.5, -.5, .5, 1.5), dy = (-6.5, 1.5, -3.5, 8.5): 20 / sqrt(5 * 129).
    # Spearman: ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6 * 2 / (4 * 15) = 0.8.
    got = gm.compute_metrics("stsb", preds, labels)
    assert got == {"pearson": pytest.approx(100 * 20 / math.sqrt(645)), "spearman": 80.0}
    # [N, 1] regression outputs are accepted.
    assert gm.compute_metrics("stsb", np.array(preds)[:, None], labels) == got


@pytest.mark.filterwarnings("error")
def test_degenerate_inputs_score_zero_without_nan():
    const = [0] * 6
    assert gm.compute_metrics("cola", const, [0, 1, 0, 1, 1, 0]) == {"matthews_corrcoef": 0.0}
    assert gm.compute_metrics("cola", [1, 1], [1, 1]) == {"matthews_corrcoef": 0.0}
    assert gm.compute_metrics("mrpc", const, [0, 1, 0, 1, 1, 0]) == {"f1": 0.0, "accuracy": 50.0}
    assert gm.compute_metrics("qqp", const, const) == {"f1": 0.0, "accuracy": 100.0}
    assert gm.compute_metrics("stsb", [2.5] * 3, [0.0, 1.0, 5.0]) == {
        "pearson": 0.0,
        "spearman": 0.0,
    }
    assert gm.compute_metrics("stsb", [1.0, 2.0], [3.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert gm.compute_metrics("stsb", [1.0], [3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="unlabelled"):
        gm.compute_metrics("rte", [0, 1], [0, -1])
    with pytest.raises(ValueError, match="nan"):
        gm.compute_metrics("stsb", [0.0, 1.0], [0.0, float("nan")])
    with pytest.raises(ValueError, match="3 predictions"):
        gm.compute_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        gm.compute_metrics("rte", [], [])
    with pytest.raises(ValueError, match=r"class ids must be integers in \[0, 2\)"):
        gm.compute_metrics("rte", [0, 2], [0, 1])
    with pytest.raises(ValueError, match=r"scores must be \[N, 3\]"):
        gm.compute_metrics("mnli", np.zeros((2, 2)), [0, 1], split="validation_matched")


# ----------------------------------------------------------------------------------------------
# Scores and tables.


def test_task_and_glue_score_by_hand():
    assert gm.task_score("mrpc", RESULTS["mrpc"]) == 75.0
    assert gm.task_score("mnli", RESULTS["mnli"]) == 83.0
    assert gm.task_score("cola", {"matthews_corrcoef": 50.0, "loss": 7.0}) == 50.0  # extras ignored
    assert gm.glue_score(RESULTS) == pytest.approx(GLUE) == 76.0
    # A subset averages over the tasks present; AX never counts.
    subset = {t: RESULTS[t] for t in ("mrpc", "mnli", "ax")}
    assert gm.glue_score(subset) == pytest.approx((75 + 83) / 2)
    with pytest.raises(ValueError, match=r"mnli: results lack \['accuracy_mm'\]"):
        gm.task_score("mnli", {"accuracy_m": 84.0})
    with pytest.raises(ValueError, match="no scored GLUE task"):
        gm.glue_score({"ax": RESULTS["ax"]})
    with pytest.raises(ValueError, match="unknown GLUE task 'snli'"):
        gm.glue_score({"snli": {"accuracy": 1.0}})


def test_results_json():
    got = gm.results_json(dict(reversed(RESULTS.items())))
    assert set(got) == {"tasks", "average"}
    assert list(got["tasks"]) == list(RESULTS)  # canonical task order
    assert got["tasks"]["mnli"] == {"accuracy_m": 84.0, "accuracy_mm": 82.0}
    assert got["average"] == pytest.approx(GLUE)
    assert json.loads(json.dumps(got)) == got
    assert gm.results_json({"ax": {"matthews_corrcoef": 1.0}})["average"] is None


def test_results_markdown():
    table = gm.results_markdown(RESULTS)
    lines = table.splitlines()
    assert lines[0] == "| Task | Metrics | Score |"
    assert "| MRPC | f1 80.00, accuracy 70.00 | 75.00 |" in lines
    assert "| MNLI | accuracy_m 84.00, accuracy_mm 82.00 | 83.00 |" in lines
    assert "| AX (not scored) | matthews_corrcoef 10.00 | 10.00 |" in lines
    assert lines[-1] == "| **GLUE score** (9 of 9 tasks) | | **76.00** |"
    assert len(lines) == 2 + 10 + 1
    partial = gm.results_markdown({"rte": {"accuracy": 66.0}, "mnli": {"accuracy_m": 80.0}})
    assert "| MNLI | accuracy_m 80.00 | – |" in partial  # incomplete: no score
    assert partial.splitlines()[-1] == "| **GLUE score** (2 of 9 tasks) | | – |"
    assert gm.results_markdown({"rte": {"accuracy": 66.0}}).splitlines()[-1] == (
        "| **GLUE score** (1 of 9 tasks) | | **66.00** |"
    )


def test_median_over_seeds():
    runs = [
        {"rte": {"accuracy": 60.0}, "mrpc": {"f1": 80.0, "accuracy": 70.0}},
        {"rte": {"accuracy": 70.0}, "mrpc": {"f1": 90.0, "accuracy": 72.0}},
        {"rte": {"accuracy": 65.0}},
    ]
    assert gm.median_over_seeds(runs) == {
        "mrpc": {"f1": 85.0, "accuracy": 71.0},  # two runs: mean of the middle two
        "rte": {"accuracy": 65.0},
    }
    assert gm.median_over_seeds([RESULTS]) == RESULTS
    with pytest.raises(ValueError):
        gm.median_over_seeds([])


# ----------------------------------------------------------------------------------------------
# Submission files.


def _read(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def test_write_submission_files(tmp_path):
    out = str(tmp_path / "sub")
    path = gm.write_submission("mnli", "test_matched", [2, 0, 1], [2, 0, 1], out)
    assert path == os.path.join(out, "MNLI-m.tsv")
    assert _read(path) == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
    path = gm.write_submission("mnli", "test_mismatched", [0], np.array([[0.1, 0.2, 3.0]]), out)
    assert os.path.basename(path) == "MNLI-mm.tsv"
    assert _read(path) == "index\tprediction\n0\tcontradiction\n"
    path = gm.write_submission("ax", "test", [0, 1], [1, 0], out)
    assert os.path.basename(path) == "AX.tsv"
    assert _read(path) == "index\tprediction\n0\tneutral\n1\tentailment\n"
    path = gm.write_submission("qnli", "test", [0, 1], [1, 0], out)
    assert _read(path) == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    path = gm.write_submission("rte", "test", [0], [0], out)
    assert _read(path) == "index\tprediction\n0\tentailment\n"
    for task, name in [("cola", "CoLA"), ("sst2", "SST-2"), ("mrpc", "MRPC"), ("qqp", "QQP")]:
        path = gm.write_submission(task, "test", [1, 0], [0, 1], out)
        assert path == os.path.join(out, f"{name}.tsv")
        assert _read(path) == "index\tprediction\n0\t1\n1\t0\n"
    path = gm.write_submission("wnli", "test", [0], [1], out)
    assert _read(path) == "index\tprediction\n0\t1\n"
    path = gm.write_submission("stsb", "test", [0, 1, 2], [-0.5, 2.34567, 5.7], out)
    assert os.path.basename(path) == "STS-B.tsv"
    assert _read(path) == "index\tprediction\n0\t0.000\n1\t2.346\n2\t5.000\n"
    # Only the finished files are left: temporary names were renamed.
    assert sorted(os.listdir(out)) == sorted(
        ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv", "QNLI.tsv", "RTE.tsv", "CoLA.tsv", "SST-2.tsv"]
        + ["MRPC.tsv", "QQP.tsv", "WNLI.tsv", "STS-B.tsv"]
    )


def test_write_submission_errors(tmp_path):
    out = str(tmp_path)
    with pytest.raises(ValueError, match="not a test split"):
        gm.write_submission("rte", "validation", [0], [0], out)
    with pytest.raises(ValueError, match="mnli has no split 'test'"):
        gm.write_submission("mnli", "test", [0], [0], out)
    with pytest.raises(ValueError, match="duplicated indexes"):
        gm.write_submission("rte", "test", [0, 0], [0, 1], out)
    with pytest.raises(ValueError, match="2 predictions"):
        gm.write_submission("rte", "test", [0], [0, 1], out)
    with pytest.raises(ValueError, match="class ids"):
        gm.write_submission("mnli", "test_matched", [0], [3], out)
    assert os.listdir(out) == []
