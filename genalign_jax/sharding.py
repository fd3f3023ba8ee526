"""Device meshes, partition rules and multi-host start-up.

Meshes have three named axes:

* ``data``   — pure data parallelism (batch rows),
* ``fsdp``   — batch rows *and* parameter shards (ZeRO-3 style),
* ``tensor`` — tensor parallelism of attention heads and MLP hidden units.

Parameters are matched to ``PartitionSpec``s by regular expressions over their
state path (``layers/attn/q_proj/kernel``).  A dimension that does not divide
by its mesh axis size is left unsharded rather than failing, so the same rules
serve tiny test models and the 8B model.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

__all__ = [
    "AXES",
    "BATCH_AXES",
    "LLAMA_RULES",
    "make_mesh",
    "param_path",
    "spec_for",
    "state_shardings",
    "shard_state",
    "batch_multiple",
    "batch_sharding",
    "constrain_batch",
    "maybe_initialize_distributed",
    "to_host",
]

AXES = ("data", "fsdp", "tensor")
# Batch rows are split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")

# (regex on the parameter path, spec).  Stacked per-layer parameters carry a
# leading layer axis, which is never sharded.
LLAMA_RULES: tuple[tuple[str, P], ...] = (
    (r"^embed_tokens$", P("tensor", "fsdp")),
    (r"layers/attn/(q_proj|k_proj|v_proj)/kernel$", P(None, "fsdp", "tensor")),
    (r"layers/attn/o_proj/kernel$", P(None, "tensor", "fsdp")),
    (r"layers/mlp/(gate_proj|up_proj)/kernel$", P(None, "fsdp", "tensor")),
    (r"layers/mlp/down_proj/kernel$", P(None, "tensor", "fsdp")),
    (r"lm_head/kernel$", P("fsdp", "tensor")),
    (r"lora_(a|b)$", P()),
    (r"(layernorm|norm)/scale$", P()),
)


def make_mesh(axis_sizes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``Mesh`` with axes ``(data, fsdp, tensor)``.

    ``axis_sizes`` maps axis names to sizes; one size may be ``-1`` to take the
    remaining devices (default: everything on ``data``).  Uses Auto axis types
    (``jax.make_mesh`` would give Explicit axes, which break ``jnp.take`` on
    sharded embeddings inside jit).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(axis_sizes or {"data": -1})
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide by the fixed mesh axes "
                             f"{dict(zip(AXES, shape))}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, "
                         f"but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def param_path(path: tuple) -> str:
    """``"layers/attn/q_proj/kernel"`` for a pytree key path into an ``nnx.State``.

    The ``.value`` attribute of NNX Variables is dropped, so paths are the same
    for states and for pure dicts.
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            if key.name == "value":
                continue
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:
            parts.append(str(key))
    return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, P]] = LLAMA_RULES) -> P:
    """The ``PartitionSpec`` for a parameter, from the first matching rule.

    Unmatched parameters are replicated.  Dimensions whose size does not divide
    by the product of their mesh axes are left unsharded.
    """
    for pattern, spec in rules:
        if re.search(pattern, path):
            break
    else:
        return P()
    entries = list(spec) + [None] * (len(shape) - len(spec))
    entries = entries[:len(shape)]
    fixed = []
    for dim, axes in zip(shape, entries):
        if axes is None:
            fixed.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(mesh.shape[name] for name in names)
        if dim % size:
            log.debug("not sharding dim of size %d of %s over %s", dim, path, names)
            fixed.append(None)
        else:
            fixed.append(axes)
    while fixed and fixed[-1] is None:  # P(None, None) and P() mean the same; keep the short form
        fixed.pop()
    return P(*fixed)


def state_shardings(state: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, P]] = LLAMA_RULES) -> Any:
    """A pytree of ``NamedSharding`` matching ``state`` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(param_path(path), leaf.shape, mesh, rules)),
        state)


def shard_state(state: Any, mesh: Mesh, rules: Sequence[tuple[str, P]] = LLAMA_RULES) -> Any:
    """Moves every array in ``state`` onto its rule-given sharding."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_multiple(mesh: Mesh | None) -> int:
    """How many devices split a batch's rows (``data`` x ``fsdp``); 1 without a mesh.

    Batches whose row count is a multiple of this shard evenly over the batch axes.
    """
    if mesh is None:
        return 1
    return math.prod(mesh.shape.get(name, 1) for name in BATCH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for ``[batch, ...]`` arrays: rows over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside jit under an active mesh, pins ``x``'s leading axis to the batch axes.

    A no-op when no mesh with the batch axes is active (single device, tests).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(name in mesh.axis_names for name in BATCH_AXES):
        return x
    size = math.prod(mesh.shape[name] for name in BATCH_AXES)
    if x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Calls ``jax.distributed.initialize`` for multi-host runs.

    With no arguments this relies on JAX's cluster auto-detection (SLURM, TPU,
    Kubernetes); with a coordinator address the three values must all be given.
    Returns ``True`` if initialisation happened, ``False`` if this process had already joined a
    distributed job (a launcher, or an earlier call, initialised it): calling it twice is safe.
    It must run before anything touches a JAX device (``jax.devices()``, ``jax.process_index()``,
    any computation), else JAX raises a ``RuntimeError``.
    """
    if jax.distributed.is_initialized():
        log.info("jax.distributed is already initialised (process %d of %d)",
                 jax.process_index(), jax.process_count())
        return False
    if coordinator_address is None and num_processes is None and process_id is None:
        jax.distributed.initialize()
        return True
    if None in (coordinator_address, num_processes, process_id):
        raise ValueError("multi-host init needs coordinator_address, num_processes and process_id "
                         "together (or none of them for auto-detection)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True


def to_host(tree: Any) -> Any:
    """NumPy copies of the arrays in ``tree``, including arrays that span several processes.

    ``np.asarray`` / ``jax.device_get`` fail on an array sharded over devices of other processes
    (a multi-process run's batch-sharded outputs); those are gathered with
    ``multihost_utils.process_allgather``, which is a collective: in a multi-process run every
    process must call ``to_host`` on the same arrays in the same order.  Fully addressable and
    fully replicated arrays (every single-process run) are fetched directly; non-array leaves
    pass through ``np.asarray``.
    """
    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
