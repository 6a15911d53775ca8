"""CoNLL-2003 English NER (PER, LOC, ORG, MISC; 14,041 / 3,250 / 3,453 sentences).

    CPU / one GPU:
      bertjax finetune --config experiments/ner/conll2003.py --workdir runs/conll \
        --config.init_checkpoint=CKPT --config.task.data_dir=DIR
    one GPU, faster:  add --config.model.dtype=bfloat16
    another lr:       --config experiments/ner/conll2003.py:3e-5
    TFDS (conll2003) instead of the files: --config.task.data_dir=tfds
    the original IOB1 tags: --config.task.tag_scheme=iob1 (most copies are IOB2 already)
    feature-based (frozen encoder, last four layers concatenated, two-layer BiLSTM):
        --config.train.freeze_encoder=True --config.model.feature_layers=-1,-2,-3,-4
    evaluate a fine-tuned model only: --config.init_checkpoint=runs/conll/best \
        --config.train.num_epochs=0
    entities in raw text: bertjax ner --checkpoint runs/conll/best --input sentences.txt
    TPU slice / several GPUs: the same command; the batch is split over mesh.data (all devices).

DIR holds train.txt, valid.txt and test.txt (token ... tag per line). CKPT is a cased BERT for
the paper's figures (a bertjax model dir from `bertjax convert --from hf|tf`). The run writes
WORKDIR/eval_results.json (dev entity F1 as metrics.f1, test as test_metrics.f1),
predictions_dev.txt and predictions_test.txt (`token gold predicted`, for conlleval).

Expected with BERT-base (lr 5e-5, batch 32, 3 epochs: ~14k rows of at most 128 tokens, about
1,320 steps):
  runtime  a few minutes on one A100/H100 in bfloat16 (an estimate, not measured here: ~1.3
           TFLOP per step at 128 tokens, less with length bucketing; CoNLL sentences average
           ~20 pieces); 1-3 hours on a 2-core CPU
  metric   dev F1 ~95 (BERT-base, sentence context; the paper's 96.4 dev / 92.4 test uses
           document context); feature-based concat of the last four layers: paper dev 96.1
Numbers: Devlin et al. (2019), Tables 3 and 7.
"""

from __future__ import annotations

import ml_collections

from experiments.ner import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: an optional peak learning rate (default 5e-5)."""
    return common.task_config("conll2003", arg, num_epochs=3.0, learning_rate=5e-5)
