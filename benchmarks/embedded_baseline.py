"""The baseline the aligned generator must beat, on the offline embedded setting.

Generates N examples per label with the *unaligned* generator (ICL prompts only), reports
parse/keep rates by rejection reason, and the real-test accuracy of a classifier trained only
on them vs one trained on the same total number of real examples (from the ICL pool).

    python benchmarks/embedded_baseline.py --per_label 200          # SmolLM2 + MiniLM, CPU ok
    python benchmarks/embedded_baseline.py --config=configs/sst2.py:tiny --per_label 8

Writes ``benchmarks/results/embedded_baseline_<backend>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from benchmarks.common import print_table, write_json  # noqa: E402


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
    args = parser.parse_args()

    from genalign_jax.evaluation import _real_subset
    from genalign_jax.loop import Trainer

    config = _load_config(args.config)
    config.output_dir = tempfile.mkdtemp(prefix="genalign-baseline-")
    config.logging.tensorboard = False
    if args.data_dir:
        config.data.data_dir = args.data_dir
    trainer = Trainer(config, logger=False)
    n = args.per_label * trainer.num_labels
    batch = config.generator.sampling.batch_size
    n_gen = -(-n // batch) * batch
    start = time.perf_counter()
    rollouts = trainer.generate(n_gen, [args.seed, 424242], jax.random.key(args.seed),
                                use_lora=False)
    gen_s = time.perf_counter() - start
    parse = rollouts.parse
    key = jax.random.key(args.seed + 1)
    _, synthetic = trainer.train_and_score(parse.kept_texts, parse.kept_labels, key, test=True)
    texts, labels = _real_subset(trainer, n, args.seed)
    _, real = trainer.train_and_score(texts, labels, key, test=True)
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
               for i, name in enumerate(trainer.data.spec.label_names)}
    path = write_json(f"embedded_baseline_{jax.default_backend()}", {
        "config": args.config, "dataset": trainer.data.spec.name, "per_label": args.per_label,
        "completions": n_gen, "generate_seconds": gen_s, "parse_counts": parse.counts(),
        "kept_fraction": parse.kept_fraction(), "results": rows, "sample_generations": samples,
        "test_size": len(trainer.data.splits.test)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
