"""The alignment experiment: does PPO-aligned data train a better classifier than ICL-only data?

    python -m benchmarks.alignment                       # both arms, CPU-sized (~1 h on 2 cores)
    python -m benchmarks.alignment --arms=influence --epochs=2
    python -m benchmarks.alignment --arms=influence --set=ppo.ppo_epochs=4 --out=/tmp/followup

Protocol (fixed before any test number was seen):
* SST-2 from the shared data (``--data_dir``), the ``:embedded`` models (SmolLM2-135M-Instruct
  generator, all-MiniLM-L6-v2 classifier), training seed 0, 64 rollouts per epoch.
* Arms: ``reward.credit=influence`` and ``reward.credit=broadcast``; everything else equal.
* ``--epochs`` loop epochs per arm (default 3: what two arms plus their evaluation fit in about an
  hour of this 2-core CPU; the KL curve, not the epoch count, says whether training had settled).
* Evaluation (``genalign_jax.run.evaluate``): per arm, ``--eval_examples`` examples per seed from
  the aligned and the base generator with the same prompts and keys, ``--eval_seeds`` seeds, plus
  a real-data reference; classifiers scored on the held-out SST-2 test split; aligned − base as a
  paired difference with a 95% bootstrap CI over seeds and test rows.
Writes ``benchmarks/results/alignment/``: ``<arm>/`` (run folder, eval JSON/MD/PNG, PEFT adapter in
float16) and ``alignment.json`` / ``alignment.md`` with every arm.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import time
from pathlib import Path

from absl import app, flags

from configs import sst2
from genalign_jax.run.cli import setup_logging
from genalign_jax.run.evaluate import evaluate_generators, format_markdown
from genalign_jax.run.export import export_peft_adapter
from genalign_jax.run.logger import read_jsonl
from genalign_jax.run.plots import plot_evaluation
from genalign_jax.run.trainer import Trainer
from genalign_jax.variants import set_dotted

log = logging.getLogger("alignment")
REPO = Path(__file__).resolve().parents[1]

_ARMS = flags.DEFINE_list("arms", ["influence", "broadcast"], "Credit modes to train.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Loop epochs per arm.")
_EVAL_N = flags.DEFINE_integer("eval_examples", 128, "Synthetic examples per generator and seed.")
_EVAL_SEEDS = flags.DEFINE_integer("eval_seeds", 2, "Evaluation seeds.")
_DATA = flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data" / "sst2"),
                            "SST-2 folder (GLUE TSVs).")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "alignment"),
                           "Output folder.")
_SET = flags.DEFINE_list("set", [], "Config overrides for a follow-up run, e.g. "
                         "ppo.ppo_epochs=4,ppo.warmup_steps=0 (values parsed as Python literals).")


def _config(arm: str, out: Path):
    c = sst2.get_config("embedded")
    c.data.data_dir = _DATA.value
    c.reward.credit = arm
    c.loop.epochs = _EPOCHS.value
    c.loop.patience = _EPOCHS.value + 1   # run every epoch: the curves are part of the result
    c.output_dir = str(out)
    c.run_name = arm
    c.logging.progress_bars = False
    for item in _SET.value:
        name, _, value = item.partition("=")
        set_dotted(c, name, ast.literal_eval(value))
    return c


def main(argv: list[str]) -> None:
    del argv
    setup_logging()
    out = Path(_OUT.value)
    results = {"protocol": {"dataset": "sst2", "variant": "embedded", "seed": 0,
                            "epochs": _EPOCHS.value, "rollouts_per_epoch": 64,
                            "eval_examples": _EVAL_N.value, "eval_seeds": _EVAL_SEEDS.value,
                            "overrides": list(_SET.value)},
               "arms": {}}
    tables = []
    for arm in _ARMS.value:
        run_dir = out / arm
        if run_dir.exists():
            shutil.rmtree(run_dir)
        start = time.perf_counter()
        trainer = Trainer(_config(arm, out), show_progress=False)
        summary = trainer.run()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        report = evaluate_generators(trainer.components, _EVAL_N.value, _EVAL_SEEDS.value)
        eval_s = time.perf_counter() - start
        history = read_jsonl(run_dir / "metrics.jsonl")
        (run_dir / "eval.md").write_text(format_markdown(report))
        plot_evaluation(report, history, run_dir / "eval.png", title=f"credit={arm}")
        export_peft_adapter(trainer.components.generator.model, run_dir / "adapter",
                            base_model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype="float16")
        for ckpt in run_dir.glob("checkpoint_epoch_*"):  # keep the result folder small
            shutil.rmtree(ckpt)
        results["arms"][arm] = {"train_s": train_s, "eval_s": eval_s, "summary": summary,
                                "history": history, **report.to_json()}
        tables.append(f"### credit={arm}\n\n" + format_markdown(report))
        (out / "alignment.json").write_text(json.dumps(results, indent=2))
        log.info("arm %s done: train %.0f s, eval %.0f s", arm, train_s, eval_s)
    (out / "alignment.md").write_text("\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    app.run(main)
