"""The feature names shared by every pipeline and the model."""

INPUT_IDS = "input_ids"
INPUT_MASK = "input_mask"
SEGMENT_IDS = "segment_ids"
MASKED_LM_POSITIONS = "masked_lm_positions"
MASKED_LM_IDS = "masked_lm_ids"
MASKED_LM_WEIGHTS = "masked_lm_weights"
NEXT_SENTENCE_LABELS = "next_sentence_labels"
LABEL = "label"

PRETRAINING_FEATURES = (
    INPUT_IDS,
    INPUT_MASK,
    SEGMENT_IDS,
    MASKED_LM_POSITIONS,
    MASKED_LM_IDS,
    MASKED_LM_WEIGHTS,
    NEXT_SENTENCE_LABELS,
)
