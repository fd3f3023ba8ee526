"""Forward throughput of our jitted Llama vs Hugging Face PyTorch on the same weights.

CPU (default): a tiny random Llama saved locally, loaded by both frameworks,
same batch; prints tokens/s and the ratio, writes
``benchmarks/results/llama_forward_<backend>.json``.

GPU: ``--preset llama3p1_8b --random_weights --dtype bfloat16`` times the prefill of
the 8B shape with random weights and reports tokens/s and MFU (HF is skipped
unless ``--hf`` is given, since it needs a second 16 GB copy).

    python benchmarks/llama_forward.py
    python benchmarks/llama_forward.py --preset llama3p1_8b --random_weights \
        --dtype bfloat16 --batch 8 --seq_len 2048
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import peak_flops, print_table, time_fn, write_json  # noqa: E402
from genalign_jax.generator import Llama, get_preset, load_llama  # noqa: E402



def forward_flops(config, batch: int, seq_len: int) -> float:
    """Matmul FLOPs of one forward (2 per MAC), attention scores included."""
    params = config.num_params - config.vocab_size * config.hidden_size  # embedding is a gather
    if config.tie_word_embeddings:
        params += config.vocab_size * config.hidden_size  # tied head is still a matmul
    attn = 2 * 2 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return batch * seq_len * (2 * params + attn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench_tiny",
                        help="'bench_tiny' (HF-comparable small model) or a Llama preset name")
    parser.add_argument("--random_weights", action="store_true",
                        help="random weights in the preset's shape (no HF comparison)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hf", action="store_true", help="also time HF PyTorch for big presets")
    args = parser.parse_args()

    rows = []
    rng = np.random.default_rng(0)
    if args.preset == "bench_tiny":
        import torch
        import transformers
        torch.manual_seed(0)
        hf_config = transformers.LlamaConfig(
            vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
        hf_model = transformers.LlamaForCausalLM(hf_config).eval()
        with tempfile.TemporaryDirectory() as folder:
            hf_model.save_pretrained(folder)
            model = load_llama(folder, dtype=args.dtype, param_dtype=args.dtype)
        config = model.config
        tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq_len)).astype(np.int32)
        torch_tokens = torch.tensor(tokens, dtype=torch.long)
        torch.set_num_threads(max(1, torch.get_num_threads()))

        def hf_forward():
            with torch.no_grad():
                hf_model(input_ids=torch_tokens).logits.sum().item()

        hf_s = time_fn(hf_forward, repeats=args.repeats)
        rows.append({"impl": "hf_pytorch", "seconds": hf_s,
                     "tokens_per_s": args.batch * args.seq_len / hf_s})
    else:
        config = get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
        model = Llama(config, rngs=nnx.Rngs(0))
        tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq_len)).astype(np.int32)

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens):
        m = nnx.merge(graphdef, state)
        hidden, _ = m.forward(tokens)
        return m.logits(hidden).sum()

    jtokens = jnp.asarray(tokens)
    ours_s = time_fn(lambda: forward(state, jtokens).block_until_ready(), repeats=args.repeats)
    flops = forward_flops(config, args.batch, args.seq_len)
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind)
    ours = {"impl": "genalign_jax", "seconds": ours_s,
            "tokens_per_s": args.batch * args.seq_len / ours_s,
            "tflops": flops / ours_s / 1e12}
    if peak and device.platform == "gpu":
        ours["mfu"] = flops / ours_s / peak
    rows.append(ours)
    if len(rows) == 2:
        ours["speedup_vs_hf"] = rows[0]["seconds"] / ours_s
    print(f"Llama forward, preset={args.preset} batch={args.batch} seq_len={args.seq_len} "
          f"dtype={args.dtype} backend={jax.default_backend()}")
    print_table(rows, ["impl", "seconds", "tokens_per_s", "tflops", "mfu", "speedup_vs_hf"])
    path = write_json(f"llama_forward_{jax.default_backend()}",
                      {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len,
                       "dtype": args.dtype, "num_params": config.num_params, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
