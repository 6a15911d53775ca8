"""Defaults shared by the NER fine-tuning experiments; conll2003.py and msra_zh.py edit a copy.

The BERT paper's recipe for CoNLL-2003 (Devlin et al., 2019, section 5.3): the label of each
word on its first WordPiece, a dense layer on every token, AdamW with peak learning rate in
{5e-5, 3e-5, 2e-5}, linear warmup over the first 10% of steps then linear decay to 0, weight
decay 0.01, dropout 0.1, batch 32, 3-4 epochs, 128 tokens per row (longer sentences are cut
into overlapping windows, each word predicted once).

    bertjax finetune --config experiments/ner/conll2003.py --workdir runs/conll \
      --config.init_checkpoint=CKPT --config.task.data_dir=DIR

Feature-based (the paper's Table 7: frozen encoder, the last four layers concatenated, a
two-layer BiLSTM tagger): add
    --config.train.freeze_encoder=True --config.model.feature_layers=-1,-2,-3,-4
(`--config.model.feature_combine=sum` sums them; `--config.model.tagger=dense` puts a dense
layer on them instead of the BiLSTM).

`config.task.name` (conll2003, msra_zh, ner or ner_<name>) tells an NER config from a GLUE one
(`bertjax.ner.is_ner_config`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from data_pipelines.bucketing import DEFAULT_MULTIPLE
from experiments.glue import common as glue_common
from experiments.pretrain.common import mesh_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # drives the head's initialisation, dropout and example order
    c.init_checkpoint = ""  # required: bertjax model dir or pre-training workdir

    c.task = ml_collections.ConfigDict()
    c.task.name = "ner"  # conll2003 | msra_zh | ner | ner_<name>
    c.task.data_dir = ""  # directory of train.txt, valid.txt (or dev.txt), test.txt; or 'tfds'
    c.task.train_file = ""  # training file, relative to data_dir ('' = train.txt)
    c.task.dev_file = ""  # dev file, relative to data_dir ('' = valid.txt or dev.txt)
    c.task.test_file = ""  # test file, relative to data_dir ('' = test.txt, if present)
    c.task.tfds_data_dir = ""  # with data_dir='tfds': TFDS data dir ('' = TFDS's default)
    c.task.tag_scheme = "auto"  # auto | iob2 | iob1 | bioes (BMES too); all read into IOB2
    c.task.max_seq_length = 128  # tokens per row: [CLS] word pieces [SEP]
    c.task.window_overlap = 32  # pieces shared by consecutive windows (at most half a window)
    c.task.label_continuations = False  # also train a word's later pieces as I-<type>
    c.task.max_train_examples = 0  # train on the first N sentences only (0 = all)
    c.task.max_eval_examples = 0  # evaluate on the first N dev sentences only (0 = all)

    c.model = ml_collections.ConfigDict()
    c.model.hidden_dropout_rate = 0.1  # dropout on embeddings, sub-layer outputs and the head
    c.model.attention_dropout_rate = 0.1  # dropout on attention probabilities (0 = fused kernel)
    c.model.dtype = config_dict.placeholder(str)  # compute dtype (None = checkpoint's; bfloat16)
    c.model.param_dtype = config_dict.placeholder(str)  # master weights (None = checkpoint's)
    c.model.remat = config_dict.placeholder(bool)  # recompute layers (None = checkpoint)
    c.model.remat_policy = config_dict.placeholder(str)  # with remat: what to keep (None = ckpt)
    c.model.scan_layers = False  # nn.scan over the layers: one compiled body, faster compiles
    c.model.feature_layers = (-1, -2, -3, -4)  # frozen encoder: layer outputs fed to the tagger
    c.model.feature_combine = "concat"  # frozen encoder: concat | sum of feature_layers
    c.model.tagger = "bilstm"  # frozen encoder: bilstm (two layers, the paper's) | dense
    c.model.lstm_size = 0  # BiLSTM units per direction (0 = the encoder's hidden size)
    c.model.lstm_layers = 2  # BiLSTM layers

    # AdamW with BERT's fine-tuning schedule and decay, as GLUE's; peak lr in {5e-5, 3e-5, 2e-5}
    c.optim = glue_common.fine_tuning_optim(learning_rate=5e-5)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch (window rows), split over processes and devices
    c.train.eval_batch_size = 0  # batch for prediction (0 = train.batch_size)
    c.train.num_epochs = 3.0  # passes over the training rows (0 = only evaluate the ckpt)
    c.train.eval_every_epoch = True  # evaluate on dev after every epoch (else only at the end)
    c.train.log_every = 50  # steps between metric fetches / log lines
    c.train.checkpoint_every = 1000  # steps between resume checkpoints (and one at SIGTERM)
    c.train.keep_checkpoints = 2  # newest resume checkpoints kept (all removed once complete)
    c.train.freeze_encoder = False  # feature-based: the encoder frozen, only the tagger trains
    c.train.predict_test = True  # predict and score test.txt with the best parameters

    c.data = ml_collections.ConfigDict()
    c.data.bucket_multiple = DEFAULT_MULTIPLE  # pad batches to a multiple of it (0 = max_seq_len)
    c.data.packing = False  # packed rows are for one prediction per example, not per token
    c.data.packed_shapes = 2  # unused without packing

    c.mesh = mesh_config()  # data / fsdp / tensor axes and the logical-axis rules
    return c


def task_config(
    task: str, arg: str | None, *, num_epochs: float, learning_rate: float
) -> ml_collections.ConfigDict:
    """The defaults with task.name, epochs and learning rate set; `arg` (the text after ':'
    in --config) is another peak learning rate, e.g. `experiments/ner/conll2003.py:3e-5`."""
    c = get_config()
    c.task.name = task
    c.train.num_epochs = num_epochs
    c.optim.learning_rate = float(arg) if arg else learning_rate
    return c
