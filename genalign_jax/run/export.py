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
import jax.numpy as jnp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.ppo.lora import add_lora

from genalign_jax.generator.weights import HF_LINEAR_NAMES

log = logging.getLogger(__name__)

__all__ = ["export_peft_adapter", "import_peft_adapter"]

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


def import_peft_adapter(model: nnx.Module, adapter_dir: str | os.PathLike) -> None:
    """Loads a PEFT LoRA adapter folder (ours or any with the same modules) into ``model``.

    Adapters are attached first if ``model`` has none; their rank and scale come from the file.
    """
    folder = Path(adapter_dir)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"--adapter: {path} not found (a PEFT adapter folder needs "
                                    "adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(config_path.read_text())
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{config_path}: invalid PEFT adapter config ({err})") from None
    if config.get("peft_type") != "LORA" or config.get("use_rslora") or config.get("use_dora"):
        raise CheckpointError(f"{config_path}: only plain LoRA adapters are supported")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path}: cannot be read ({err})") from None
    modules = {"/".join(str(p) for p in path[1:]): module for path, module in nnx.iter_modules(model)
               if path and path[0] == "layers" and "/".join(str(p) for p in path[1:]) in HF_LINEAR_NAMES}
    wanted = {ours for ours, hf in HF_LINEAR_NAMES.items()
              if f"base_model.model.model.layers.0.{hf}.lora_A.weight" in tensors}
    if not wanted:
        raise CheckpointError(f"{weights_path}: no LoRA tensors for the Llama projections")
    if any(modules[m].lora_a is None for m in wanted):
        add_lora(model, rank, alpha, targets=sorted({m.split("/")[-1] for m in wanted}),
                 rngs=nnx.Rngs(0))
    used = 0
    for ours in sorted(wanted):
        module, hf = modules[ours], HF_LINEAR_NAMES[ours]
        layers = module.lora_a.shape[0]
        try:
            a = np.stack([tensors[f"base_model.model.model.layers.{i}.{hf}.lora_A.weight"].T
                          for i in range(layers)])
            b = np.stack([tensors[f"base_model.model.model.layers.{i}.{hf}.lora_B.weight"].T
                          for i in range(layers)])
        except KeyError as err:
            raise CheckpointError(f"{weights_path}: missing tensor {err.args[0]}") from None
        if a.shape != module.lora_a.shape or b.shape != module.lora_b.shape:
            raise CheckpointError(f"{weights_path}: {hf} adapters have shapes {a.shape}/{b.shape}, "
                                  f"the model expects {module.lora_a.shape}/{module.lora_b.shape}")
        module.lora_a[...] = jnp.asarray(a.astype(np.float32), module.lora_a.dtype)
        module.lora_b[...] = jnp.asarray(b.astype(np.float32), module.lora_b.dtype)
        module.lora_scale = alpha / rank
        used += 2 * layers
    if used != len(tensors):
        raise CheckpointError(f"{weights_path}: {len(tensors) - used} tensor(s) for modules the "
                              "model does not have")
    log.info("loaded a PEFT adapter (r=%d, alpha=%g, %d tensors) from %s", rank, alpha, used,
             folder)
