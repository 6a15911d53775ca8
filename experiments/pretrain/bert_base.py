"""BERT-base pre-training as in the paper (Devlin et al., 2019).

Batch 256 x 1M steps, Adam lr 1e-4, warmup 10k, linear decay, weight decay 0.01, dropout
0.1; phase 1 runs 90% of the steps at sequence length 128 (20 predictions), phase 2 the
last 10% at 512 (80 predictions), starting from phase 1's checkpoint. Data: shards from
`bertjax prepare` over Wikipedia + BooksCorpus (one directory per sequence length).

    CPU (smoke):  bertjax train --config experiments/pretrain/bert_base.py:phase1 --workdir runs/base1 \
                    --config.data.train_dir=data/wiki128 --config.train.batch_size=8
    one GPU:      bertjax train --config experiments/pretrain/bert_base.py:phase1 --workdir runs/base1 \
                    --config.data.train_dir=data/wiki128 --config.model.dtype=bfloat16 \
                    --config.optim.grad_accum_steps=4
    TPU v4-32 pod slice (bertjax installed and the data bucket mounted with gcsfuse at ~/gcs on
    every worker; README, "Running on a TPU pod / GPU cluster"):
        gcloud compute tpus tpu-vm ssh bert-v4-32 --zone=us-central2-b --worker=all --command='
          bertjax train --config bert_base:phase1 --workdir gs://b/base1 \
            --config.data.train_dir=$HOME/gcs/wiki128 --config.model.dtype=bfloat16 \
            --config.mesh.fsdp=4'
    SLURM, 2 nodes x 8 GPUs (sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8):
        srun bertjax train --config bert_base:phase1 --workdir /shared/runs/base1 \
          --config.data.train_dir=/shared/data/wiki128 --config.model.dtype=bfloat16
    phase 2:      bertjax train --config experiments/pretrain/bert_base.py:phase2 --workdir runs/base2 \
                    --config.init_checkpoint=runs/base1 --config.data.train_dir=data/wiki512

Expected: MLM accuracy ~0.70, NSP accuracy ~0.98 at the end; GLUE average ~79 (paper).
Runtime: about 4 days on 16 TPU v3 chips (paper); weeks on one GPU.
"""

from __future__ import annotations

from experiments.pretrain import common

TOTAL_STEPS = 1_000_000


def get_config(arg: str | None = None):
    phase = arg or "phase1"
    if phase not in ("phase1", "phase2"):
        raise ValueError(f"bert_base.py: unknown variant {phase!r}; use phase1 or phase2")
    c = common.get_config()
    c.model.size = "base"
    c.train.batch_size = 256
    if phase == "phase1":
        c.data.max_seq_length = 128
        c.data.max_predictions_per_seq = 20
        c.train.num_steps = TOTAL_STEPS * 9 // 10
        c.optim.warmup_steps = 10_000
    else:
        c.data.max_seq_length = 512
        c.data.max_predictions_per_seq = 80
        c.train.num_steps = TOTAL_STEPS // 10
        c.optim.warmup_steps = 1_000
    return c
