"""Named-entity recognition experiment configs (bertjax/ner.py)."""
