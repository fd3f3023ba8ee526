"""The baseline the aligned generator must beat, on the offline embedded setting.

Generates N examples per label with the *unaligned* generator (ICL prompts only), reports
parse/keep rates by rejection reason, and the real-test accuracy of a classifier trained only
on them vs one trained on the same total number of real examples (from the ICL pool).

    python -m benchmarks.embedded_baseline --per_label 200          # SmolLM2 + MiniLM, CPU ok
    python -m benchmarks.embedded_baseline --config=configs/sst2.py:tiny --per_label 8

Writes ``benchmarks/results/embedded_baseline_<backend>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import jax

from benchmarks.common import print_table, write_json
from genalign_jax.run.components import build_components
from genalign_jax.run.evaluate import real_subset
from genalign_jax.run.rollouts import sample_rollouts
from genalign_jax.run.scoring import train_and_score
from genalign_jax.run.trainer import as_run_config

REPO = Path(__file__).resolve().parents[1]


def _load_config(spec: str):
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("run_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sst2.py:embedded")
    parser.add_argument("--per_label", type=int, default=200)
    parser.add_argument("--data_dir", default="", help="dataset folder (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="results name (default embedded_baseline_<backend>)")
    args = parser.parse_args()

    config = _load_config(args.config)
    config.logging.tensorboard = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    components = build_components(as_run_config(config))
    data = components.data
    n = args.per_label * data.num_labels
    batch = config.generator.sampling.batch_size
    n_gen = -(-n // batch) * batch
    start = time.perf_counter()
    rollouts = sample_rollouts(components, n_gen, [args.seed, 424242],
                               jax.random.key(args.seed), use_lora=False)
    gen_s = time.perf_counter() - start
    parse = rollouts.parse
    key = jax.random.key(args.seed + 1)
    synthetic = train_and_score(components, parse.kept_texts, list(parse.kept_labels), key,
                                split="test")
    texts, labels = real_subset(components, n, args.seed)
    real = train_and_score(components, texts, labels, key, split="test")
    rows = [
        {"train_set": "synthetic (base generator)", "examples": parse.num_kept,
         "test_accuracy": synthetic["accuracy"], "test_loss": synthetic["loss"],
         "test_macro_f1": synthetic["macro_f1"]},
        {"train_set": "real (ICL pool)", "examples": len(texts), "test_accuracy": real["accuracy"],
         "test_loss": real["loss"], "test_macro_f1": real["macro_f1"]},
    ]
    print(f"generated {n_gen} completions in {gen_s:.1f} s; outcomes: {parse.counts()} "
          f"(kept {parse.kept_fraction():.1%})")
    print_table(rows, ["train_set", "examples", "test_accuracy", "test_loss", "test_macro_f1"])
    samples = {name: [t for t, l in zip(parse.kept_texts, parse.kept_labels) if l == i][:5]
               for i, name in enumerate(data.spec.label_names)}
    path = write_json(args.out or f"embedded_baseline_{jax.default_backend()}", {
        "config": args.config, "dataset": data.spec.name, "per_label": args.per_label,
        "completions": n_gen, "generate_seconds": gen_s, "parse_counts": parse.counts(),
        "kept_fraction": parse.kept_fraction(), "results": rows, "sample_generations": samples,
        "test_size": len(data.splits.test)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
