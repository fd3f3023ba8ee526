"""Classifier train-step throughput: our JAX step vs HF PyTorch, same shapes, one run.

Both sides run the same architecture, batch, sequence length and optimiser
(AdamW, grad-norm clipping at 1.0, dropout on): ours is the jitted step that
``genalign_jax.classifier.train_classifier`` uses; the reference is
``RobertaForSequenceClassification`` (or ``BertFor...``) with ``torch.optim.AdamW``.

    python benchmarks/classifier_train.py --torch_threads 1 --steps 100   # tiny, CPU
    python benchmarks/classifier_train.py --preset roberta_base --batch 32 --seq_len 128 \
        --dtype bfloat16                                                   # on a GPU

Dropout is timed on and off (``--dropout``).  On a small, shared CPU pass
``--torch_threads 1``: torch's default OpenMP threads spin-wait and collapse.
Prints a table and writes ``benchmarks/results/classifier_train_<backend>.json``.
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

from genalign_jax import classifier as clf_lib  # noqa: E402
from genalign_jax.classifier.encoder_config import get_preset  # noqa: E402
from genalign_jax.classifier.model import place_params, put_rows  # noqa: E402
from genalign_jax.classifier.train import program_for  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny_roberta", help="genalign_jax.classifier.PRESETS name")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype (weights and Adam state stay float32 on both sides)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per side")
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


def bench_ours(config, tokens, mask, labels, steps: int, warmup: int) -> dict:
    """Times the jitted step of ``train_classifier`` (no tokenisation, device-resident batch)."""
    classifier = clf_lib.build_classifier(config, tokenizer=object(), mesh="auto",
                                          max_length=tokens.shape[1])
    cfg = clf_lib.ClassifierConfig(num_labels=config.num_labels, batch_size=tokens.shape[0])
    program = program_for(classifier, cfg)  # dropout on, as in training
    step = program.train_step
    params = program.copy(classifier.params)
    mesh = classifier.mesh
    opt_state = place_params(program.init_opt_state(params), mesh)
    args = [put_rows(a, mesh) for a in (tokens, mask, labels, np.ones(len(labels), np.float32))]
    key = jax.random.wrap_key_data(jnp.zeros((4,), jnp.uint32), impl="rbg")
    scalars = (np.float32(2e-5), np.float32(0.01), np.float32(0.0), key)  # lr, decay, smoothing
    t0 = time.perf_counter()
    for i in range(warmup):
        params, opt_state, loss, _ = step(params, opt_state, *args, *scalars, np.int32(i))
    jax.block_until_ready(loss)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss, _ = step(params, opt_state, *args, *scalars, np.int32(i))
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - t0
    return dict(step_ms=1e3 * seconds / steps, examples_per_s=len(labels) * steps / seconds,
                warmup_s=warm_s, final_loss=float(loss),
                devices=1 if mesh is None else int(mesh.devices.size))


def bench_torch(config, tokens, mask, labels, steps: int, warmup: int, dtype: str) -> dict:
    """Times HF ``...ForSequenceClassification`` + ``torch.optim.AdamW`` on the same batch."""
    import torch
    import transformers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  intermediate_size=config.intermediate_size,
                  num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                  max_position_embeddings=config.max_position_embeddings,
                  type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                  pad_token_id=config.pad_token_id, num_labels=config.num_labels,
                  hidden_dropout_prob=config.hidden_dropout,
                  attention_probs_dropout_prob=config.attention_dropout)
    if config.head_type == "roberta":
        model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**common))
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

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        one_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    sync()
    seconds = time.perf_counter() - t0
    return dict(step_ms=1e3 * seconds / steps, examples_per_s=len(labels) * steps / seconds,
                final_loss=float(loss.detach()), device=device, torch=torch.__version__,
                threads=torch.get_num_threads())


def main() -> None:
    args = _args()
    base = get_preset(args.preset, num_labels=args.num_labels, dtype=args.dtype,
                      param_dtype="float32")
    if args.seq_len > base.max_tokens:
        raise SystemExit(f"--seq_len {args.seq_len} exceeds the preset's "
                         f"{base.max_tokens} positions")
    if args.torch_threads and not args.no_torch:
        import torch
        torch.set_num_threads(args.torch_threads)
    tokens, mask, labels = _batch(base, args.batch, args.seq_len)
    backend = jax.default_backend()
    modes = ["on", "off"] if args.dropout == "both" else [args.dropout]
    runs = []
    for mode in modes:
        config = base if mode == "on" else base.replace(hidden_dropout=0.0, attention_dropout=0.0)
        ours = bench_ours(config, tokens, mask, labels, args.steps, args.warmup)
        ref = None if args.no_torch else bench_torch(config, tokens, mask, labels, args.steps,
                                                     args.warmup, args.dtype)
        runs.append(dict(dropout=mode, ours=ours, hf_torch=ref,
                         speedup=None if ref is None else
                         ours["examples_per_s"] / ref["examples_per_s"]))
    result = dict(
        benchmark="classifier_train_step", backend=backend,
        device=str(jax.devices()[0].device_kind), host=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), preset=args.preset, config=dataclasses.asdict(base),
        batch=args.batch, seq_len=args.seq_len, dtype=args.dtype, steps=args.steps,
        jax=jax.__version__, runs=runs)
    print(f"\nclassifier train step: {args.preset}, batch {args.batch}, seq {args.seq_len}, "
          f"{args.dtype}, {backend}")
    header = ("implementation", "dropout", "step ms", "examples/s", "ours/HF")
    print(f"{header[0]:<16} {header[1]:>8} {header[2]:>10} {header[3]:>12} {header[4]:>8}")
    for run in runs:
        for name, r in [("ours (JAX/NNX)", run["ours"]), ("HF PyTorch", run["hf_torch"])]:
            if r is None:
                continue
            ratio = f"{run['speedup']:.2f}x" if run["speedup"] and name.startswith("ours") else ""
            print(f"{name:<16} {run['dropout']:>8} {r['step_ms']:>10.2f} "
                  f"{r['examples_per_s']:>12.1f} {ratio:>8}")
    out = Path(args.out) if args.out else (REPO / "benchmarks" / "results" /
                                           f"classifier_train_{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
