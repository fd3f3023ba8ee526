"""The run: the only package that knows every stage, and wires them into the closed loop.

* :mod:`.components` — everything built once from a :class:`~genalign_jax.config.RunConfig`;
* :mod:`.rollouts` — prompts → sampled completions → parsed examples;
* :mod:`.scoring` — kept examples → classifier → golden loss + distances → per-sample rewards;
* :mod:`.trainer` — the loop: epochs, PPO updates, resume, checkpoints, logging;
* :mod:`.evaluate` — aligned vs base generator (and real data) on the held-out test set;
* :mod:`.export` — the aligned LoRA adapters in the Hugging Face PEFT format;
* :mod:`.checkpoint`, :mod:`.logger`, :mod:`.convergence`, :mod:`.lock`, :mod:`.plots` — run
  state on disk, metrics, stopping, the run-folder lock, evaluation plots;
* :mod:`.cli` — ``genalign-train`` / ``genalign-evaluate`` / ``genalign-export``.

The modules are imported on use (``from genalign_jax.run.trainer import Trainer``); this package
file imports nothing, so ``import genalign_jax.run.logger`` stays light.
"""
