"""Analytic FLOP counts of the benchmarked programs (the numerators of every roofline).

Matmuls only: 2 x multiply-adds.  Embedding gathers, norms, softmax, activations and optimizer
updates are not counted (each is a few FLOPs per element against hundreds per token of matmul).
``tests/test_gpu_suite.py`` checks the Llama counts against XLA's cost analysis.
"""

from __future__ import annotations

from typing import Any


def _linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of one Llama layer, by module name."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def llama_forward_flops(config, rows: int, seq_len: int, window: int, lora_rank: int = 0,
                        lora_targets: tuple[str, ...] = ()) -> dict[str, float]:
    """Matmul FLOPs of one forward over ``rows`` x ``seq_len`` tokens, logits on ``window`` of them.

    Returns the parts: ``trunk`` (dense projections), ``lora`` (adapters), ``attention``
    (QK^T and PV over the full masked matrix), ``head`` (LM head at the window).
    """
    shapes = _linear_shapes(config)
    tokens = rows * seq_len
    layers = config.num_layers
    dense = sum(i * o for i, o in shapes.values())
    lora = sum(lora_rank * (i + o) for name, (i, o) in shapes.items() if name in lora_targets)
    return {
        "trunk": 2.0 * dense * layers * tokens,
        "lora": 2.0 * lora * layers * tokens,
        "attention": 4.0 * rows * seq_len * seq_len * config.num_heads * config.head_dim * layers,
        "head": 2.0 * config.hidden_size * config.vocab_size * rows * window,
    }


def lora_update_flops(config, rows: int, seq_len: int, window: int, lora_rank: int,
                      lora_targets: tuple[str, ...], steps: int = 1) -> dict[str, float]:
    """FLOPs of ``steps`` LoRA PPO minibatch steps of ``rows`` x ``seq_len`` (logits at ``window``).

    ``model``: forward + backward (frozen weights: activation gradients only; LoRA: activation +
    weight gradients; attention backward = 2 x forward; head: activation gradient only).
    ``hardware``: ``model`` + the remat recompute of every layer's forward in the backward
    (but its ``down_proj``).
    """
    f = llama_forward_flops(config, rows, seq_len, window, lora_rank, lora_targets)
    forward = sum(f.values())
    backward = f["trunk"] + 2 * f["lora"] + 2 * f["attention"] + f["head"]
    # The recompute skips each layer's last projection (down_proj): the backward needs only its
    # input.  (Checked against XLA's cost analysis in tests/test_gpu_suite.py.)
    down_in, down_out = _linear_shapes(config)["down_proj"]
    tokens_layers = rows * seq_len * config.num_layers
    down = 2.0 * tokens_layers * (down_in * down_out + (
        lora_rank * (down_in + down_out) if "down_proj" in lora_targets else 0))
    remat = f["trunk"] + f["lora"] + f["attention"] - down
    return {"model": steps * (forward + backward), "hardware": steps * (forward + backward + remat),
            "forward": steps * forward, **{f"forward_{k}": steps * v for k, v in f.items()}}


def rollout_flops(config, rows: int, seq_len: int, window: int, lora_rank: int,
                  lora_targets: tuple[str, ...]) -> float:
    """``make_rollout``: one forward with adapters (policy) + one without (reference)."""
    with_lora = sum(llama_forward_flops(config, rows, seq_len, window, lora_rank,
                                        lora_targets).values())
    without = sum(llama_forward_flops(config, rows, seq_len, window).values())
    return with_lora + without


def encoder_train_flops(config: Any, batch: int, seq_len: int) -> float:
    """Analytic train-step FLOPs of an encoder classifier: forward = 2 x (Q, K, V, O and the two
    FFN matmuls) per token + 4 x T^2 x hidden per layer for attention scores and values; the
    backward costs twice the forward (weight + activation gradients).  Embedding gathers,
    norms, softmax, the head and the optimizer are not counted."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_layers
    tokens = batch * seq_len
    forward = (2.0 * (4 * d * d + 2 * d * f) * layers * tokens
               + 4.0 * batch * seq_len * seq_len * d * layers)
    return 3.0 * forward
