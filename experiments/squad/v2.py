"""SQuAD v2.0: fine-tune a BERT checkpoint (130,319 train / 11,873 dev questions, a third of
them unanswerable).

    CPU / one GPU:
      bertjax finetune --config experiments/squad/v2.py --workdir runs/squad2 \
        --config.init_checkpoint=CKPT --config.task.data_dir=DIR
    one GPU, faster:  add --config.model.dtype=bfloat16
    another lr:       --config experiments/squad/v2.py:3e-5
    TFDS (squad/v2.0) instead of the JSON files: --config.task.data_dir=tfds
    predict with the dev-tuned null threshold: --config.eval.null_score_diff_threshold=T, T the
        tuned_null_threshold of a previous run's eval_results.json
    TPU slice / several GPUs: the same command; the batch is split over mesh.data (all devices).

DIR holds train-v2.0.json and dev-v2.0.json; CKPT is a bertjax model dir or a pre-training
workdir. A question is answered "" (no answer) when its null score minus its best span score
exceeds eval.null_score_diff_threshold (0.0: predictions.json, null_odds.json). Each evaluation
also tunes that threshold on dev (tuned_null_threshold, tuned_exact, tuned_f1 in the metrics,
predictions_tuned.json); the best epoch is chosen by tuned_f1, as the paper tuned the threshold
on dev. The official best_exact / best_f1 (and their thresholds) are reported too.

Expected (lr 5e-5, batch 48, 2 epochs: about 132k features of 384 tokens, about 5,500 steps):
  runtime  BERT-base about as long as v1.1 (the same number of tokens): minutes on one H100 in
           bfloat16, BERT-large about 3.5 times that (estimates from the FLOPs per step, not
           measured here); days on CPU
  metric   BERT-large dev EM 78.7 / F1 81.9 and test EM 80.0 / F1 83.1 (Devlin et al., 2019,
           Table 3, single model; the paper gives no BERT-base v2.0 number)
"""

from __future__ import annotations

import ml_collections

from experiments.squad import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: an optional peak learning rate (default 5e-5)."""
    return common.task_config("squad_v2", arg, batch_size=48, num_epochs=2.0)
