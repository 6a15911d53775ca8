"""BERT-large pre-training as in the paper: L=24, H=1024, A=16, same recipe as base.

    CPU (smoke):  bertjax train --config experiments/pretrain/bert_large.py:phase1 --workdir runs/large1 \
                    --config.data.train_dir=data/wiki128 --config.train.batch_size=2
    one GPU:      bertjax train --config experiments/pretrain/bert_large.py:phase1 --workdir runs/large1 \
                    --config.data.train_dir=data/wiki128 --config.model.dtype=bfloat16 \
                    --config.model.remat=True --config.optim.grad_accum_steps=16
    TPU v4-64 pod slice (bertjax installed and the data bucket mounted with gcsfuse at ~/gcs on
    every worker; README, "Running on a TPU pod / GPU cluster"):
        gcloud compute tpus tpu-vm ssh bert-v4-64 --zone=us-central2-b --worker=all --command='
          bertjax train --config bert_large:phase1 --workdir gs://b/large1 \
            --config.data.train_dir=$HOME/gcs/wiki128 --config.model.dtype=bfloat16 \
            --config.mesh.fsdp=8'
    SLURM, 4 nodes x 8 GPUs (sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8):
        srun bertjax train --config bert_large:phase1 --workdir /shared/runs/large1 \
          --config.data.train_dir=/shared/data/wiki128 --config.model.dtype=bfloat16 \
          --config.model.remat=True
    phase 2:      ... bert_large.py:phase2 --config.init_checkpoint=runs/large1 --config.data.train_dir=data/wiki512

Expected: GLUE average ~82 (paper); about 4 days on 64 TPU v3 chips.
"""

from __future__ import annotations

from experiments.pretrain import bert_base


def get_config(arg: str | None = None):
    c = bert_base.get_config(arg)
    c.model.size = "large"
    return c
