"""Hugging Face checkpoint loading without torch or a conversion step.

* ``resolve_checkpoint`` turns a local folder or a hub id (already in the local
  HF cache, or downloadable when online) into a folder path.
* ``SafetensorsCheckpoint`` memory-maps ``model.safetensors`` or a sharded
  checkpoint (``model.safetensors.index.json``); reading a tensor touches only
  its bytes, so peak host memory stays near one tensor.
* ``load_into_state`` fills an abstract NNX state from a checkpoint following a
  name map: each tensor is read, transformed (e.g. transposed), cast and placed
  on its final ``NamedSharding``; per-layer tensors are written into the stacked
  ``[num_layers, ...]`` device array one layer at a time (a donated, jitted
  in-place update), never staged whole on the host.
* Missing, unexpected and mis-shaped tensors raise ``CheckpointError`` naming
  the tensor, the expected and the found shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from genalign_jax.sharding import param_path

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "resolve_checkpoint",
    "SafetensorsCheckpoint",
    "read_hf_config",
    "open_model_source",
    "TensorSpec",
    "load_into_state",
]


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into."""


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """Returns a local folder for ``name_or_path``.

    A path that exists is used as is.  Otherwise the string is treated as a hub id
    and resolved through the local Hugging Face cache first (works offline);
    only when it is not cached and ``HF_HUB_OFFLINE`` is unset is a download
    attempted.
    """
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint path {path} is a file; expected a folder with "
                                    "config.json and *.safetensors")
        return path
    name = os.fspath(name_or_path)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_local:
        raise FileNotFoundError(f"checkpoint folder not found: {name}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with transformers
        raise FileNotFoundError(f"checkpoint folder not found: {name}") from err
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.gguf"]
    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True,
                                      allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if offline:
            raise FileNotFoundError(
                f"checkpoint {name!r} is neither a local folder nor in the Hugging Face cache "
                f"(HF_HUB_OFFLINE is set, so it was not downloaded)") from err
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network errors come in many types
        raise FileNotFoundError(
            f"checkpoint {name!r} is neither a local folder nor in the Hugging Face cache, "
            f"and downloading it failed: {type(err).__name__}: {err}") from err


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _TensorLocation:
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsCheckpoint:
    """Lazy, memory-mapped reader for one or many ``*.safetensors`` files."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            files = sorted({folder / name for name in weight_map.values()})
        elif (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            bins = sorted(p.name for p in folder.glob("*.bin"))
            hint = (f" It has {bins}: convert it to safetensors (e.g. load it once with "
                    "transformers and save_pretrained(safe_serialization=True)).") if bins else ""
            raise FileNotFoundError(f"no *.safetensors weights in {folder}.{hint}")
        self.folder = folder
        self._tensors: dict[str, _TensorLocation] = {}
        self._maps: dict[Path, np.memmap] = {}
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{index}: shard {file.name} is listed but missing")
            self._read_header(file)

    def _read_header(self, file: Path) -> None:
        size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or header_len > size - 8:
                raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, header "
                                      f"claims {header_len})")
            try:
                header = json.loads(f.read(header_len))
                if not isinstance(header, dict):
                    raise ValueError("the header is not a JSON object")
            except (ValueError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{file}: corrupt header ({err})") from None
        base = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype_name, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{file}: corrupt header entry for tensor {name}") from None
            if dtype_name not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {dtype_name}")
            dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
            if base + end > size or end - start != dtype.itemsize * int(np.prod(shape)):
                raise CheckpointError(f"{file}: truncated or corrupt: tensor {name} needs bytes "
                                      f"{base + start}..{base + end} of a {size}-byte file")
            self._tensors[name] = _TensorLocation(file, dtype, tuple(shape), base + start,
                                                  base + end)

    def keys(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def get(self, name: str) -> np.ndarray:
        """The tensor as a (memory-mapped, read-only) NumPy array."""
        loc = self._tensors[name]
        if loc.file not in self._maps:
            self._maps[loc.file] = np.memmap(loc.file, dtype=np.uint8, mode="r")
        raw = self._maps[loc.file][loc.start:loc.end]
        return raw.view(loc.dtype).reshape(loc.shape)


def read_hf_config(config: str | os.PathLike | dict, what: str) -> tuple[dict, str]:
    """``(config dict, source name)`` from a ``config.json`` path, its folder, or a dict."""
    if isinstance(config, dict):
        return config, "<dict>"
    path = os.fspath(config)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} config not found: {path}")
    with open(path) as f:
        try:
            return json.load(f), path
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: invalid JSON ({err})") from None


def open_model_source(name_or_path: str | os.PathLike, checkpoint: Any, config: Any,
                      parse_config: Callable[..., Any], overrides: dict[str, Any],
                      caller: str) -> tuple[Any, Any]:
    """The ``(tensor source, model config)`` a ``load_*`` function works from.

    Without ``checkpoint`` the folder is resolved (local or HF cache), its safetensors are
    opened and, unless ``config`` is given, ``parse_config(folder, **overrides)`` reads
    ``config.json``.  An explicit ``checkpoint`` (e.g. a GGUF adapter) needs ``config``.
    """
    if checkpoint is None:
        folder = resolve_checkpoint(name_or_path)
        if config is None:
            config = parse_config(folder, **overrides)
            overrides = {}
        checkpoint = SafetensorsCheckpoint(folder)
    elif config is None:
        raise ValueError(f"{caller}: pass config= together with checkpoint=")
    if overrides and any(getattr(config, k) != v for k, v in overrides.items()):
        config = config.replace(**overrides)
    return checkpoint, config


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Where a target parameter comes from.

    ``source`` is a checkpoint tensor name; for stacked per-layer parameters it
    contains ``{layer}`` and is read once per layer.  ``transform`` maps the
    NumPy tensor to the target layout (e.g. ``np.transpose``).
    """

    source: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    stacked: bool = False


def load_into_state(abstract_state: Any, checkpoint: Any, spec: Mapping[str, TensorSpec],
                    shardings: Any = None, num_layers: int = 0,
                    ignore_unused: Iterable[str] = ()) -> Any:
    """Fills ``abstract_state`` (an ``nnx.State`` of ShapeDtypeStructs) from ``checkpoint``.

    Args:
      abstract_state: the model's abstract state (``nnx.split(nnx.eval_shape(...))``);
        every leaf named in ``spec`` is loaded, leaves not in ``spec`` are an error.
      checkpoint: anything with ``keys()``, ``__contains__``, ``get(name)``.
      spec: target path (``"layers/attn/q_proj/kernel"``) → ``TensorSpec``.
      shardings: optional pytree of ``jax.sharding.Sharding`` matching
        ``abstract_state``; default is the first local device.
      num_layers: number of stacked layers (for ``{layer}`` sources).
      ignore_unused: regexes of checkpoint tensors that may be left unused
        (e.g. ``rotary_emb.inv_freq``).

    Returns the state with concrete arrays; raises ``CheckpointError`` listing
    missing, unexpected or mis-shaped tensors.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    if shardings is None:
        device = jax.local_devices()[0]
        shard_leaves = [jax.sharding.SingleDeviceSharding(device)] * len(leaves)
    else:
        shard_leaves = jax.tree_util.tree_leaves(shardings)
        if len(shard_leaves) != len(leaves):
            raise ValueError("shardings must have the same structure as abstract_state")
    missing = []
    for path, _ in leaves:
        name = param_path(path)
        if name not in spec:
            raise CheckpointError(f"model parameter {name} has no source in the checkpoint map")
        tspec = spec[name]
        names = ([tspec.source.format(layer=i) for i in range(num_layers)] if tspec.stacked
                 else [tspec.source])
        missing += [n for n in names if n not in checkpoint]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")

    used: set[str] = set()
    out = []
    for (path, abstract), sharding in zip(leaves, shard_leaves):
        name = param_path(path)
        tspec = spec[name]
        dtype = abstract.dtype
        shape = tuple(abstract.shape)
        if tspec.stacked:
            array = _zeros(shape, dtype, sharding)
            for layer in range(num_layers):
                src = tspec.source.format(layer=layer)
                value = _read(checkpoint, src, tspec, shape[1:], name)
                array = _set_layer(array, value.astype(dtype), layer)
                used.add(src)
        else:
            value = _read(checkpoint, tspec.source, tspec, shape, name)
            array = jax.device_put(value.astype(dtype), sharding)
            used.add(tspec.source)
        out.append(array)
    patterns = [re.compile(p) for p in ignore_unused]
    unexpected = [k for k in checkpoint.keys()
                  if k not in used and not any(p.search(k) for p in patterns)]
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f" (+{len(unexpected) - 8} more)"
                                             if len(unexpected) > 8 else "")
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s) the model "
                              f"does not use: {shown}")
    return jax.tree_util.tree_unflatten(treedef, out)


def _read(checkpoint, src: str, tspec: TensorSpec, expected: tuple, target: str) -> np.ndarray:
    value = np.asarray(checkpoint.get(src))
    if (np.issubdtype(value.dtype, np.inexact) or value.dtype == ml_dtypes.bfloat16) \
            and not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise CheckpointError(f"tensor {src} holds {bad} NaN/inf value(s) of {value.size}: the "
                              "weights file is corrupt")
    if tspec.transform is not None:
        value = tspec.transform(value)
    if tuple(value.shape) != tuple(expected):
        raise CheckpointError(f"tensor {src} (for {target}): expected shape {tuple(expected)} "
                              f"after conversion, found {tuple(value.shape)}")
    return value


def _zeros(shape, dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


def _set_layer_impl(stacked, value, layer):
    return jax.lax.dynamic_update_index_in_dim(stacked, value.astype(stacked.dtype), layer, 0)


@functools.lru_cache(maxsize=None)
def _layer_setter(sharding: jax.sharding.Sharding) -> Callable:
    return jax.jit(_set_layer_impl, donate_argnums=0, out_shardings=sharding)


def _set_layer(stacked: jax.Array, value: np.ndarray, layer: int) -> jax.Array:
    """Writes ``value`` into ``stacked[layer]`` in place (buffer donated, sharding kept)."""
    return _layer_setter(stacked.sharding)(stacked, value, np.int32(layer))
