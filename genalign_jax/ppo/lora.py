"""LoRA adapters on the linear projections of an NNX model.

``add_lora`` attaches ``nnx.LoRAParam`` variables ``lora_a`` [.., in, r] and
``lora_b`` [.., r, out] (zero-initialised, so the adapted model starts equal to
the base) to every targeted linear module, and sets ``lora_scale = alpha / r``.
``nnx.state(model, nnx.LoRAParam)`` then selects exactly the adapters, which is
how PPO trains only them.

Why not ``nnx.LoRA`` / ``nnx.LoRALinear`` modules: our Llama stacks its layers
(every per-layer parameter has a leading ``num_layers`` axis and the forward
scans over it).  Inserting ``nnx.LoRA`` sub-modules into the already-built
stacked blocks would need per-layer modules and a second vmap; instead
``genalign_jax.generator.llama.Linear`` applies the adapter itself,
``y = x W + (x A) B · scale``, with ``A``/``B`` stored as the same
``nnx.LoRAParam`` variable type ``nnx.LoRA`` uses, carrying the leading layer
axis.  Its ``use_lora=False`` call switch gives the reference policy from the
same weights.

Any module works as a target if it exposes ``kernel`` ([..., in, out]) and the
attributes ``lora_a``, ``lora_b`` and ``lora_scale``, and applies them when
called with ``use_lora=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genalign_jax.ppo.config import DEFAULT_LORA_TARGETS

log = logging.getLogger(__name__)

__all__ = ["add_lora", "has_lora", "count_params"]


def _is_lora_capable(module: nnx.Module) -> bool:
    return all(hasattr(module, name) for name in ("kernel", "lora_a", "lora_b", "lora_scale"))


def add_lora(model: nnx.Module, rank: int, alpha: float | None = None, *,
             targets: Sequence[str] = DEFAULT_LORA_TARGETS, rngs: nnx.Rngs,
             dtype: jnp.dtype | str = jnp.float32) -> list[str]:
    """Attaches LoRA adapters in place to every linear module named in ``targets``.

    Args:
      model: an NNX model whose targeted modules expose ``kernel``/``lora_a``/
        ``lora_b``/``lora_scale`` (e.g. ``genalign_jax.generator.llama.Llama``).
      rank: adapter rank ``r``.
      alpha: scale numerator (``scale = alpha / rank``); defaults to ``rank`` (scale 1).
      targets: attribute names of the modules to adapt (matched on the last
        path element, e.g. ``q_proj``).
      rngs: random streams; ``lora_a`` draws from ``rngs.params()``.
      dtype: storage dtype of the adapters (float32 by default, so optimizer
        updates are not rounded away when the base is bfloat16).

    Returns:
      Sorted paths (``"layers/attn/q_proj"``) of the adapted modules.

    Raises:
      ValueError: no module matched, or a module already carries adapters.
      TypeError: a matched module cannot hold adapters.
    """
    if int(rank) < 1:
        raise ValueError(f"add_lora: rank must be >= 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    targets = tuple(targets)
    dtype = jnp.dtype(dtype)
    found = []
    for path, module in nnx.iter_modules(model):
        if not path or str(path[-1]) not in targets:
            continue
        name = "/".join(str(p) for p in path)
        if not _is_lora_capable(module):
            raise TypeError(
                f"add_lora: module {name} ({type(module).__name__}) cannot hold adapters; it needs "
                "kernel, lora_a, lora_b and lora_scale attributes (see genalign_jax.generator.llama."
                "Linear), or attach nnx.LoRA modules to your model yourself")
        if module.lora_a is not None:
            raise ValueError(f"add_lora: module {name} already has LoRA adapters")
        shape = tuple(module.kernel.shape)
        if len(shape) < 2:
            raise TypeError(f"add_lora: kernel of {name} has shape {shape}; "
                            "expected [..., in, out]")
        found.append((name, module, shape))
    if not found:
        raise ValueError(f"add_lora: no module named any of {list(targets)} in "
                         f"{type(model).__name__}")
    # A ~ He-uniform(fan_in) independently per layer, B = 0.  One uniform draw for all
    # adapters, cut up on the host: eager per-shape random ops would each compile.
    a_shapes = [shape[:-2] + (shape[-2], rank) for _, _, shape in found]
    sizes = [int(np.prod(s)) for s in a_shapes]
    uniform = np.asarray(jax.random.uniform(rngs.params(), (sum(sizes),), jnp.float32, -1.0, 1.0))
    offset = 0
    for (name, module, shape), a_shape, size in zip(found, a_shapes, sizes):
        bound = np.sqrt(6.0 / shape[-2])
        a = (uniform[offset:offset + size] * bound).reshape(a_shape)
        offset += size
        module.lora_a = nnx.LoRAParam(jnp.asarray(a, dtype))
        module.lora_b = nnx.LoRAParam(jnp.asarray(np.zeros(shape[:-2] + (rank, shape[-1])), dtype))
        module.lora_scale = alpha / rank
    adapted = sorted(name for name, _, _ in found)
    log.info("LoRA rank %d (scale %.3g) on %d modules, %d adapter params", rank, alpha / rank,
             len(adapted), count_params(nnx.state(model, nnx.LoRAParam)))
    return adapted


def has_lora(model: nnx.Module) -> bool:
    """True if ``model`` holds any ``nnx.LoRAParam``."""
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays (e.g. an ``nnx.State``)."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(tree)))
