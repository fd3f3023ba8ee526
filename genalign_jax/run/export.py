"""Export the aligned generator's LoRA adapters in the Hugging Face PEFT format.

``export_peft_adapter(model, out_dir, base_model=...)`` writes ``adapter_config.json`` and
``adapter_model.safetensors`` so that ``peft.PeftModel.from_pretrained(LlamaForCausalLM..., out_dir)``
(or ``merge_and_unload()``) reproduces our LoRA-on model.  Our adapters are stacked over layers
(``lora_a [L, in, r]``, ``lora_b [L, r, out]``, scale ``alpha / r``); PEFT stores one pair per
layer and module, ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]``, scaled by
``lora_alpha / r``.  ``python launch/export.py --config=... --checkpoint=... --out=DIR``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from genalign_jax.generator.weights import HF_LINEAR_NAMES

log = logging.getLogger(__name__)

__all__ = ["export_peft_adapter"]

_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def export_peft_adapter(model: nnx.Module, out_dir: str | os.PathLike, *, base_model: str,
                        dtype: str = "float16") -> Path:
    """Writes the adapters of ``model`` (a ``Llama`` with LoRA) as a PEFT LoRA adapter folder."""
    if dtype not in _DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    tensors: dict[str, np.ndarray] = {}
    targets, ranks, alphas = set(), set(), set()
    for path, module in nnx.iter_modules(model):
        if getattr(module, "lora_a", None) is None or not path or path[0] != "layers":
            continue
        ours = "/".join(str(p) for p in path[1:])
        if ours not in HF_LINEAR_NAMES:
            raise ValueError(f"no Hugging Face name for the adapted module layers/{ours}")
        a = np.asarray(module.lora_a[...], np.float32)     # [L, in, r]
        b = np.asarray(module.lora_b[...], np.float32)     # [L, r, out]
        rank = a.shape[-1]
        ranks.add(rank)
        alphas.add(float(module.lora_scale) * rank)
        targets.add(HF_LINEAR_NAMES[ours].split(".")[-1])
        for layer in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{layer}.{HF_LINEAR_NAMES[ours]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[layer].T).astype(_DTYPES[dtype])
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[layer].T).astype(_DTYPES[dtype])
    if not tensors:
        raise ValueError("the model has no LoRA adapters to export")
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"PEFT needs one rank and alpha for every module, found ranks "
                         f"{sorted(ranks)} and alphas {sorted(alphas)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": ranks.pop(), "lora_alpha": alphas.pop(), "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(targets), "fan_in_fan_out": False, "inference_mode": True,
        "use_rslora": False, "init_lora_weights": True, "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    log.info("wrote a PEFT adapter (%d tensors, r=%d) to %s", len(tensors), config["r"], out)
    return out
