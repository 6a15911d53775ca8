"""Side-by-side performance scripts (`make bench`); not tests, and not part of the wheel.

Each script runs as a module from the repository root, with bertjax installed (`pip install
-e .`, as `make` does):

    python -m benchmarks.train_step --size base --seq_len 128 --batch_size 8 --peer

They import bertjax and data_pipelines as installed packages and the code they share as
`benchmarks.harness` and `benchmarks.train_step`. The scripts that import no other
benchmark (finetune_e2e, ner_e2e, packing, prepare_data, input_pipeline,
accelerator_check) also run as files: `python benchmarks/packing.py` (accelerator_check then
times the input pipeline itself instead of through benchmarks.input_pipeline).
"""
