"""Defaults shared by the SQuAD fine-tuning experiments; v1.py and v2.py edit a copy.

The BERT paper's recipe (Devlin et al., 2019, section 4.2-4.3): AdamW with peak learning rate
5e-5, linear warmup over the first 10% of steps then linear decay to 0, weight decay 0.01,
dropout 0.1; windows of 384 tokens every 128 context tokens, questions cut to 64 tokens; answers
of at most 30 tokens chosen from the 20 best start and end positions. v1.1: batch 32, 3 epochs;
v2.0: batch 48, 2 epochs.

    bertjax finetune --config experiments/squad/v1.py --workdir runs/squad1 \
      --config.init_checkpoint=CKPT --config.task.data_dir=DIR

`config.task.name` (squad_v1 | squad_v2) tells a SQuAD config from a GLUE one
(`bertjax.squad.is_squad_config`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from data_pipelines.bucketing import DEFAULT_MULTIPLE
from experiments.pretrain.common import mesh_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives the span head's initialisation, dropout and example order
    c.init_checkpoint = ""  # required: bertjax model dir or pre-training workdir

    c.task = ml_collections.ConfigDict()
    c.task.name = ""  # squad_v1 | squad_v2
    c.task.data_dir = ""  # directory of train-v1.1.json, dev-v1.1.json (v2.0 alike) or 'tfds'
    c.task.train_file = ""  # training JSON, relative to data_dir ('' = the standard name)
    c.task.dev_file = ""  # dev JSON, relative to data_dir ('' = the standard name)
    c.task.tfds_data_dir = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    c.task.max_train_examples = 0  # train on the first N questions only (0 = all)
    c.task.max_eval_examples = 0  # evaluate on the first N dev questions only (0 = all)
    c.task.max_seq_length = 384  # tokens per feature: [CLS] question [SEP] window [SEP]
    c.task.doc_stride = 128  # context tokens between the starts of consecutive windows
    c.task.max_query_length = 64  # questions are cut to this many tokens

    c.model = ml_collections.ConfigDict()
    c.model.hidden_dropout_rate = 0.1  # dropout on embeddings and sub-layer outputs
    c.model.attention_dropout_rate = 0.1  # dropout on attention probabilities (0 = fused kernel)
    c.model.dtype = config_dict.placeholder(str)  # compute dtype (None = checkpoint's; bfloat16)
    c.model.param_dtype = config_dict.placeholder(str)  # master weights (None = checkpoint's)
    c.model.remat = config_dict.placeholder(bool)  # recompute layers (None = checkpoint)
    c.model.remat_policy = config_dict.placeholder(str)  # with remat: what to keep (None = ckpt)
    c.model.scan_layers = False  # nn.scan over the layers: one compiled body, faster compiles

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | lamb
    c.optim.learning_rate = 5e-5  # peak learning rate (the paper's, both versions)
    c.optim.warmup_fraction = 0.1  # linear warmup over this share of the steps
    c.optim.decay = "linear"  # linear | cosine | constant after warmup
    c.optim.end_learning_rate = 0.0  # value at the last step
    c.optim.beta1 = 0.9  # Adam beta1
    c.optim.beta2 = 0.999  # Adam beta2
    c.optim.eps = 1e-6  # Adam epsilon (BERT's)
    c.optim.weight_decay = 0.01  # decoupled, not on LayerNorm or biases
    c.optim.clip_grad_norm = 1.0  # global-norm clipping (0 = off)
    c.optim.grad_accum_steps = 1  # micro-batches per step, accumulated inside the jitted step

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch (features), split over processes and devices
    c.train.eval_batch_size = 0  # batch for prediction (0 = train.batch_size)
    c.train.num_epochs = 3.0  # passes over the training features (0 = only evaluate the ckpt)
    c.train.eval_every_epoch = True  # evaluate on dev after every epoch (else only at the end)
    c.train.log_every = 50  # steps between metric fetches / log lines
    c.train.checkpoint_every = 1000  # steps between resume checkpoints (and one at SIGTERM)
    c.train.keep_checkpoints = 2  # newest resume checkpoints kept (all removed once complete)

    c.data = ml_collections.ConfigDict()
    c.data.bucket_multiple = DEFAULT_MULTIPLE  # pad batches to a multiple of it (0 = max_seq_len)
    c.data.packing = False  # packed rows are for one prediction per example, not spans
    c.data.packed_shapes = 2  # unused without packing

    c.eval = ml_collections.ConfigDict()
    c.eval.n_best_size = 20  # start and end positions tried per feature; n-best list length
    c.eval.max_answer_length = 30  # longest answer, in tokens
    c.eval.null_score_diff_threshold = 0.0  # v2.0: answer "" when null - best score exceeds it

    c.mesh = mesh_config()  # data / fsdp / tensor axes and the logical-axis rules
    return c


def task_config(
    task: str, arg: str | None, *, batch_size: int, num_epochs: float
) -> ml_collections.ConfigDict:
    """The defaults with task.name, batch and epochs set; `arg` (the text after ':' in
    --config) is a peak learning rate, e.g. `experiments/squad/v1.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.train.batch_size = batch_size
    c.train.num_epochs = num_epochs
    if arg:
        c.optim.learning_rate = float(arg)
    return c
