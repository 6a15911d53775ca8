"""What sequence packing saves: padding, rows per epoch and pairs per second of compute.

    python -m benchmarks.packing [--corpus FILE] [--vocab DIR] [--seq_lens 128 512] [--json]

Prepares pre-training pairs from a corpus (default: the embedded CPython documentation,
with google-research/bert's recipe: dupe_factor 1, short_seq_prob 0.1) at each sequence
length, then plans packs of up to `--max_sequences` pairs per row (the plan training
uses, `data_pipelines.packing.plan_packs`) and prints, with and without packing: rows
per epoch, the share of padding tokens, and the pairs per step-second a model trains on.
The last is the ratio of rows per epoch corrected by the model FLOPs of a row
(bertjax/flops.py for bert-base; a packed row has a few more MLM prediction slots); the
encoder costs the same per row, packed or not, because packing only changes which
tokens attend to which.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from bertjax import flops
from bertjax.config import model_config_for_size
from data_pipelines import corpus_sources, packing
from data_pipelines import pretrain_input as pinput
from data_pipelines import pretraining_data as pdata
from data_pipelines.records import load_dataset_info
from data_pipelines.tokenizers import load_tokenizer
from data_pipelines.vocab import train_vocab


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", help="text file in BERT's format (default: embedded corpus)")
    p.add_argument("--vocab", help="vocab.txt / tokenizer directory (default: train one)")
    p.add_argument("--seq_lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--max_sequences", type=int, default=packing.DEFAULT_MAX_SEQUENCES_PER_PACK)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        source = args.corpus
        if source is None:
            source = os.path.join(work, "embedded.txt")
            corpus_sources.write_embedded_corpus(source)
        if args.vocab:
            tok = load_tokenizer(args.vocab)
        else:
            tok = train_vocab(
                [source], kind="wordpiece", vocab_size=30522, out_dir=os.path.join(work, "vocab")
            )
        model = model_config_for_size("base", vocab_size=tok.vocab_size)
        print(f"corpus {source if args.corpus else 'embedded'}; up to {args.max_sequences} pairs")
        for t in args.seq_lens:
            max_pred = {128: 20, 512: 80}.get(t, round(t * 0.15))
            out = os.path.join(work, f"data{t}")
            pdata.create_pretraining_data(
                [source],
                tok,
                out,
                max_seq_length=t,
                max_predictions_per_seq=max_pred,
                dupe_factor=1,
                dynamic_masking=True,
                progress=False,
            )
            info = load_dataset_info(out)
            records = pinput.PretrainRecordSource.from_dataset(out, info)
            lengths = pinput.record_lengths(records)
            plan = packing.plan_packs(lengths, t, args.max_sequences)
            slots = packing.max_predictions_per_pack(t, max_pred, 0.15, args.max_sequences)
            row_flops = flops.training_flops_per_sequence(model, t, max_pred)
            packed_flops = flops.training_flops_per_sequence(model, t, slots)
            speedup = len(lengths) / len(plan) * row_flops / packed_flops
            results[t] = {
                "pairs": int(len(lengths)),
                "mean_pair_tokens": float(lengths.mean()),
                "rows_unpacked": int(len(lengths)),
                "rows_packed": int(len(plan)),
                "padding_unpacked": packing.padding_fraction(lengths, len(lengths), t),
                "padding_packed": packing.padding_fraction(lengths, len(plan), t),
                "prediction_slots": [max_pred, slots],
                "pairs_per_compute_speedup": speedup,
            }
            r = results[t]
            print(
                f"seq {t}: {r['pairs']} pairs of {r['mean_pair_tokens']:.1f} tokens on average; "
                f"rows {r['rows_unpacked']} -> {r['rows_packed']}; padding "
                f"{r['padding_unpacked']:.1%} -> {r['padding_packed']:.1%}; "
                f"pairs per step-second x{speedup:.2f}"
            )
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
