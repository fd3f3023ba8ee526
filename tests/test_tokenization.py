"""Tokenisation helpers: left-padded prompt batches, chat templates, decoding completions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.models.llama import Llama, get_preset
from genalign_jax.sampling import SampleOutput, SamplingConfig, generate
from genalign_jax.tokenization import (decode_completions, encode_prompts, load_tokenizer,
                                       pad_token_id, stop_token_ids)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["the movie was great\n", "the film was terrible and boring\n", "I loved the acting",
         "a great story with great actors"]


def _build_tokenizer(folder, pad: bool = True, chat: bool = True):
    """A tiny byte-level BPE tokenizer (BOS prepended) saved to ``folder``; loaded back."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = tokenizers.decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                             initial_alphabet=pre.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator(TEXTS * 5, trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    extra = {"pad_token": "<pad>"} if pad else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   **extra)
    if chat:
        fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return load_tokenizer(str(folder))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_encode_prompts_left_pads_to_a_bucket(tokenizer):
    tokens, mask = encode_prompts(tokenizer, TEXTS)
    assert tokens.dtype == np.int32 and mask.dtype == np.int32 and tokens.shape == (4, 16)
    for text, row, m in zip(TEXTS, tokens, mask):
        expected = tokenizer.encode(text)
        assert expected[0] == tokenizer.bos_token_id
        n = len(expected)
        assert m.tolist() == [0] * (16 - n) + [1] * n
        assert row[16 - n:].tolist() == expected
        assert (row[:16 - n] == tokenizer.pad_token_id).all()
        assert tokenizer.decode(row[m == 1].tolist(), skip_special_tokens=True) == text
    tokens, mask = encode_prompts(tokenizer, TEXTS, bucket=False)
    assert tokens.shape[1] == max(len(tokenizer.encode(t)) for t in TEXTS)
    tokens, mask = encode_prompts(tokenizer, TEXTS, bucket_min=32)
    assert tokens.shape == (4, 32)


def test_truncation_keeps_the_end(tokenizer):
    tokens, mask = encode_prompts(tokenizer, TEXTS, max_length=3, bucket=False)
    assert tokens.shape == (4, 3) and mask.all()
    for text, row in zip(TEXTS, tokens):
        assert row.tolist() == tokenizer.encode(text)[-3:]


def test_pad_falls_back_to_eos(tmp_path):
    tok = _build_tokenizer(tmp_path, pad=False, chat=False)
    assert tok.pad_token_id is None and pad_token_id(tok) == tok.eos_token_id == 2
    tokens, mask = encode_prompts(tok, ["a great story", "the film"])
    assert (tokens[mask == 0] == 2).all()
    with pytest.raises(ValueError, match="no chat_template"):
        encode_prompts(tok, ["hi"], chat=True)


def test_chat_template(tokenizer):
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "the movie was great"}]
    tokens, mask = encode_prompts(tokenizer, ["I loved the acting", conversation], chat=True,
                                  bucket=False)
    first = tokenizer.decode(tokens[0][mask[0] == 1].tolist())
    assert first == "<|im_start|>user\nI loved the acting<|im_end|>\n<|im_start|>assistant\n"
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=True)
    assert tokens[1][mask[1] == 1].tolist() == tokenizer.encode(rendered,
                                                                add_special_tokens=False)
    # No BOS is added on top of the template's own tokens.
    assert tokenizer.bos_token_id not in tokens[mask == 1].tolist()
    tokens, mask = encode_prompts(tokenizer, ["hi"], chat=True, system_prompt="be brief",
                                  bucket=False)
    assert tokenizer.decode(tokens[0].tolist()).startswith("<|im_start|>system\nbe brief")


def test_bad_inputs_raise(tokenizer):
    with pytest.raises(ValueError, match="empty prompt batch"):
        encode_prompts(tokenizer, [])
    with pytest.raises(ValueError, match="not a single string"):
        encode_prompts(tokenizer, "the movie")
    with pytest.raises(ValueError, match="chat=False needs string prompts"):
        encode_prompts(tokenizer, [[{"role": "user", "content": "x"}]])
    with pytest.raises(ValueError, match="expected exactly one"):
        stop_token_ids(tokenizer, ["the movie was"])


def test_stop_token_ids(tokenizer):
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    assert stop_token_ids(tokenizer) == (2,)
    assert stop_token_ids(tokenizer, ["\n"]) == (2, newline)


def _output(tokens, lengths, stopped, prompt_length=2):
    tokens = jnp.asarray(tokens, jnp.int32)
    n = tokens.shape[1]
    cm = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    zeros = jnp.zeros(tokens.shape, jnp.float32)
    prompt = jnp.ones((tokens.shape[0], prompt_length), jnp.int32)
    return SampleOutput(tokens=jnp.concatenate([prompt, tokens], 1),
                        mask=jnp.concatenate([prompt, jnp.asarray(cm)], 1),
                        prompt_length=prompt_length, completion_tokens=tokens,
                        completion_mask=jnp.asarray(cm), logprobs=zeros,
                        sampling_logprobs=zeros, hidden=None, lengths=jnp.asarray(lengths),
                        stopped=jnp.asarray(stopped))


def test_decode_completions_strips_stop_and_pads(tokenizer):
    great = tokenizer.encode(" great", add_special_tokens=False)
    story = tokenizer.encode(" story", add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    body = great + story
    rows = [body + [2], body + newline, body + great, body]
    width = max(len(r) for r in rows) + 2
    tokens = [r + [0] * (width - len(r)) for r in rows]
    out = _output(tokens, [len(r) for r in rows], [True, True, False, False])
    texts = decode_completions(tokenizer, out)
    assert texts == [" great story", " great story", " great story great", " great story"]
    raw = decode_completions(tokenizer, out, strip_stop=False, skip_special_tokens=False)
    assert raw[0] == " great story</s>" and raw[1] == " great story\n"


def test_end_to_end_with_a_tiny_model(tokenizer):
    model = Llama(get_preset("tiny", vocab_size=len(tokenizer)), rngs=nnx.Rngs(0))
    tokens, mask = encode_prompts(tokenizer, TEXTS[:3])
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    config = SamplingConfig(max_new_tokens=4, greedy=True,
                            stop_token_ids=stop_token_ids(tokenizer, ["\n"]),
                            pad_token_id=pad_token_id(tokenizer))
    out = generate(model, tokens, mask, config)
    texts = decode_completions(tokenizer, out)
    for row, text in enumerate(texts):
        ids = np.asarray(out.completion_tokens[row, :int(out.lengths[row])]).tolist()
        if ids and ids[-1] in (2, newline):
            ids = ids[:-1]
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
