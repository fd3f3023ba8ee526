"""Train: align the generator with PPO until the golden metrics converge (= ``genalign-train``).

    python launch/train.py --config=configs/sst2.py                 # Llama-3.1-8B + roberta-base
    python launch/train.py --config=configs/sst2.py:embedded        # offline SmolLM2 + MiniLM
    python launch/train.py --config=configs/sst2.py:tiny --config.loop.epochs=2
    python launch/train.py --config=configs/sst2.py:tiny --resume   # continue the latest checkpoint

Outputs go to ``<config.output_dir>/<config.run_name>/``: ``checkpoint_epoch_N/``,
``tensorboard/``, ``metrics.jsonl``, ``config.json`` and ``summary.json``.
"""

from genalign_jax.run.cli import train_main

if __name__ == "__main__":
    train_main()
