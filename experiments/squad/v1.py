"""SQuAD v1.1: fine-tune a BERT checkpoint (87,599 train / 10,570 dev questions).

    CPU / one GPU:
      bertjax finetune --config experiments/squad/v1.py --workdir runs/squad1 \
        --config.init_checkpoint=CKPT --config.task.data_dir=DIR
    one GPU, faster:  add --config.model.dtype=bfloat16
    another lr:       --config experiments/squad/v1.py:3e-5
    TFDS (squad/v1.1) instead of the JSON files: --config.task.data_dir=tfds
    evaluate a fine-tuned model only: --config.init_checkpoint=runs/squad1/best \
        --config.train.num_epochs=0
    TPU slice / several GPUs: the same command; the batch is split over mesh.data (all devices).

DIR holds train-v1.1.json and dev-v1.1.json (https://rajpurkar.github.io/SQuAD-explorer/); CKPT
is a bertjax model dir (`bertjax convert --from hf|tf ...`) or a pre-training workdir. The run
writes WORKDIR/predictions.json, nbest_predictions.json and eval_results.json (see
bertjax/squad.py); `bertjax.squad.evaluate_files` scores a predictions file again.

Expected with BERT-base (lr 5e-5, batch 32, 3 epochs: about 88.6k features of 384 tokens, so
about 8,300 steps):
  runtime  roughly 3-6 minutes of training on one H100, 8-20 on one A100, in bfloat16, plus
           under a minute per dev evaluation (an estimate, not measured here: ~7 TFLOP per
           step, 56 PFLOP in all, at 15-40% of the bf16 peak); days on CPU
  metric   dev EM 80.8 / F1 88.5 (BERT-base); BERT-large dev EM 84.1 / F1 90.9
Numbers: Devlin et al. (2019), Table 2 (single models).
"""

from __future__ import annotations

import ml_collections

from experiments.squad import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: an optional peak learning rate (default 5e-5)."""
    return common.task_config("squad_v1", arg, batch_size=32, num_epochs=3.0)
