"""Evaluate an aligned generator against its base model on the real test set (= ``genalign-evaluate``).

    python launch/evaluate.py --config=configs/sst2.py \
        --checkpoint=outputs/sst2-default/checkpoint_epoch_10 --num_examples=400 --seeds=3

For each seed: N examples from the aligned generator and N from the base generator (LoRA off),
from the same prompts and sampling keys, each train a fresh classifier scored on the held-out test
split; ``--real_baseline`` adds a classifier trained on N real examples.  Prints a mean ± std table
and writes JSON (default: next to the checkpoint).
"""

from genalign_jax.run.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
