"""RTE: fine-tune a BERT checkpoint (2,490 train / 277 dev examples).

    CPU / one GPU:
      bertjax finetune --config experiments/glue/rte.py --workdir runs/rte \
        --config.init_checkpoint=CKPT --config.task.data_dir=glue_data
    one GPU, faster:  add --config.model.dtype=bfloat16
    another lr:       --config experiments/glue/rte.py:3e-5 (paper grid: 5e-5 4e-5 3e-5 2e-5)
    TFDS instead of the GLUE files: --config.task.data_dir=tfds
    TPU slice / several GPUs: the same command; the batch is split over mesh.data (all devices).

CKPT is a bertjax model dir (`bertjax convert --from hf|tf ...`) or a pre-training workdir.

Expected with BERT-base (lr 2e-5, batch 32, 3 epochs = 234 steps):
  runtime  under 1 minute on one A100/H100 in bfloat16 (an estimate at ~20 steps/s
           plus evaluation, not measured here); hours on CPU
  metric   accuracy ~65.7 (BERT-base dev; paper test: 66.4); small and unstable: try several seeds
Dev numbers: the Hugging Face run_glue reference (bert-base-cased); test numbers: Devlin et
al. (2019), Table 1.
"""

from __future__ import annotations

import ml_collections

from experiments.glue import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: an optional peak learning rate (default 2e-5)."""
    return common.task_config("rte", arg, learning_rate=2e-5)
