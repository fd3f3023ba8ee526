"""Loading Hugging Face Llama checkpoints (safetensors) into ``Llama``.

``load_llama("meta-llama/Llama-3.1-8B", mesh=mesh)`` resolves the folder (local
path or HF cache), reads ``config.json``, builds the model abstractly (no
random init of 8B weights) and streams every tensor onto its final sharding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from genalign_jax import hf_checkpoint
from genalign_jax import sharding as sharding_lib
from genalign_jax.generator.llama import Llama
from genalign_jax.generator.llama_config import LlamaConfig, from_hf_config

log = logging.getLogger(__name__)

__all__ = ["HF_LINEAR_NAMES", "llama_checkpoint_map", "load_llama", "abstract_llama"]

# Our stacked-layer module paths -> the Hugging Face module names inside model.layers.{i}
# (also the PEFT adapter names: genalign_jax.run.export).
HF_LINEAR_NAMES = {
    "attn/q_proj": "self_attn.q_proj", "attn/k_proj": "self_attn.k_proj",
    "attn/v_proj": "self_attn.v_proj", "attn/o_proj": "self_attn.o_proj",
    "mlp/gate_proj": "mlp.gate_proj", "mlp/up_proj": "mlp.up_proj",
    "mlp/down_proj": "mlp.down_proj",
}


def llama_checkpoint_map(config: LlamaConfig) -> dict[str, hf_checkpoint.TensorSpec]:
    """Our parameter paths → HF tensor names (``[out, in]`` weights are transposed)."""
    spec = {
        "embed_tokens": hf_checkpoint.TensorSpec("model.embed_tokens.weight"),
        "norm/scale": hf_checkpoint.TensorSpec("model.norm.weight"),
        "layers/input_layernorm/scale": hf_checkpoint.TensorSpec(
            "model.layers.{layer}.input_layernorm.weight", stacked=True),
        "layers/post_attention_layernorm/scale": hf_checkpoint.TensorSpec(
            "model.layers.{layer}.post_attention_layernorm.weight", stacked=True),
    }
    for ours, theirs in HF_LINEAR_NAMES.items():
        spec[f"layers/{ours}/kernel"] = hf_checkpoint.TensorSpec(
            f"model.layers.{{layer}}.{theirs}.weight", transform=np.transpose, stacked=True)
    if not config.tie_word_embeddings:
        spec["lm_head/kernel"] = hf_checkpoint.TensorSpec("lm_head.weight", transform=np.transpose)
    return spec


def abstract_llama(config: LlamaConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract (shape-only) state, without allocating weights."""
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def load_llama(name_or_path: str | os.PathLike, *, mesh: Mesh | None = None,
               rules: Sequence[tuple[str, PartitionSpec]] = sharding_lib.LLAMA_RULES,
               checkpoint: Any = None, config: LlamaConfig | None = None,
               **config_overrides: Any) -> Llama:
    """Loads a Llama checkpoint from a local folder or the HF cache.

    Args:
      name_or_path: local folder with ``config.json`` and ``*.safetensors``, or a hub id.
      mesh: if given, parameters are placed with ``rules`` over this mesh;
        otherwise on the first local device.
      checkpoint: an already opened tensor source (e.g. a GGUF reader adapter);
        defaults to the folder's safetensors.
      config: use this config instead of reading ``config.json``.
      **config_overrides: e.g. ``dtype="bfloat16", param_dtype="bfloat16"``.
    """
    checkpoint, config = hf_checkpoint.open_model_source(name_or_path, checkpoint, config,
                                                      from_hf_config, config_overrides,
                                                      "load_llama")
    graphdef, abstract_state = abstract_llama(config)
    shardings = None
    if mesh is not None:
        shardings = sharding_lib.state_shardings(abstract_state, mesh, rules)
    ignore = [r"rotary_emb\.inv_freq$"]
    if config.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")  # some tied checkpoints store the copy
    state = hf_checkpoint.load_into_state(abstract_state, checkpoint, llama_checkpoint_map(config),
                                       shardings=shardings, num_layers=config.num_layers,
                                       ignore_unused=ignore)
    log.info("loaded Llama (%d layers, %.1fM params) from %s", config.num_layers,
             config.num_params / 1e6, name_or_path)
    return nnx.merge(graphdef, state)
