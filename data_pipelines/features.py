"""The feature names shared by every pipeline and the model: the keys of a batch.

Shapes use the model's letters: B rows, T length, P masked positions, E pairs (examples)
per packed row.
"""

# The inputs of every task, [B, T] int.
INPUT_IDS = "input_ids"
INPUT_MASK = "input_mask"  # 1 on real tokens, 0 on padding
SEGMENT_IDS = "segment_ids"  # 0 for the first segment, 1 for the second

# Pre-training targets: masked LM [B, P], next-sentence prediction [B] ([B, E] packed).
MASKED_LM_POSITIONS = "masked_lm_positions"
MASKED_LM_IDS = "masked_lm_ids"
MASKED_LM_WEIGHTS = "masked_lm_weights"
NEXT_SENTENCE_LABELS = "next_sentence_labels"

# Packed rows (data_pipelines.packing): several pairs or examples in one row.
POSITION_IDS = "position_ids"  # [B, T] positions restarting at every pair
ATTENTION_SEGMENT_IDS = "attention_segment_ids"  # [B, T] 1, 2, ... per pair, 0 on padding
NEXT_SENTENCE_POSITIONS = "next_sentence_positions"  # [B, E] each pair's [CLS] position

# Downstream tasks: the class, value or per-token labels (GLUE, NER), SQuAD's answer span
# and the example each row comes from (a long SQuAD context gives several rows).
LABEL = "label"
START_POSITIONS = "start_positions"
END_POSITIONS = "end_positions"
EXAMPLE_INDEX = "example_index"

# Hugging Face's names of two inputs (transformers' BertModel.forward arguments), which
# the model also accepts: attention_mask is INPUT_MASK, token_type_ids is SEGMENT_IDS.
HF_ATTENTION_MASK = "attention_mask"
HF_TOKEN_TYPE_IDS = "token_type_ids"

PRETRAINING_FEATURES = (
    INPUT_IDS,
    INPUT_MASK,
    SEGMENT_IDS,
    MASKED_LM_POSITIONS,
    MASKED_LM_IDS,
    MASKED_LM_WEIGHTS,
    NEXT_SENTENCE_LABELS,
)

PACKED_FEATURES = (
    *PRETRAINING_FEATURES,
    POSITION_IDS,
    ATTENTION_SEGMENT_IDS,
    NEXT_SENTENCE_POSITIONS,
)
