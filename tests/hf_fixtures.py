"""Tiny random Hugging Face models saved locally, shared by the parity tests.

torch and transformers' PyTorch models are test-only oracles; the library never
imports them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

LLAMA_VARIANTS = {
    "plain": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "llama3_rope": dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "tied_gqa": dict(num_key_value_heads=2, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def make_tiny_hf_llama(folder: Path, variant: str = "plain", seed: int = 0, **overrides):
    """Saves a random ``LlamaForCausalLM`` in ``folder``; returns the torch model (fp32, eval)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    kwargs = {**TINY_LLAMA, **LLAMA_VARIANTS[variant], **overrides}
    config = transformers.LlamaConfig(**kwargs)
    model = transformers.LlamaForCausalLM(config).eval()
    # Random init leaves norms at one; perturb them so parity checks cover the scales.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits of an HF causal LM on a padded batch, with positions counted over real tokens."""
    import torch

    positions = np.maximum(np.cumsum(mask, -1) - 1, 0) * mask
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def padded_batch(lengths, total, vocab, left: bool, seed: int = 0):
    """Random tokens ``[B, total]`` and mask with rows of ``lengths`` real tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for row, n in enumerate(lengths):
        if left:
            mask[row, total - n:] = 1
        else:
            mask[row, :n] = 1
    tokens = np.where(mask == 1, tokens, 0)
    return tokens, mask


# --------------------------------------------------------------- encoders (RoBERTa / BERT)

TINY_ENCODER = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=40)
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, pad id 1 as in roberta-base
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # pad id 0 as in BERT


def make_tiny_tokenizer(folder: Path | None, words, style: str = "roberta"):
    """A word-level ``PreTrainedTokenizerFast`` adding ``<s> .. </s>`` (or ``[CLS] .. [SEP]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ROBERTA_SPECIALS if style == "roberta" else BERT_SPECIALS
    vocab = {tok: i for i, tok in enumerate(list(specials) + sorted(set(words) - set(specials)))}
    if style == "roberta":
        bos, pad, eos, unk = specials
    else:
        pad, unk, bos, eos = specials
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   unk_token=unk, pad_token=pad, cls_token=bos, sep_token=eos)
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def make_tiny_hf_encoder(folder: Path, kind: str = "roberta_cls", seed: int = 0, **overrides):
    """Saves a random HF encoder in ``folder``; returns the torch model (fp32, eval).

    ``kind``: ``roberta_cls`` (RobertaForSequenceClassification), ``roberta_mlm``,
    ``roberta_base`` (RobertaModel), ``bert_cls``, ``bert_base`` (BertModel with pooler),
    ``bert_nopool``.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if kind.startswith("roberta"):
        config = transformers.RobertaConfig(**{**TINY_ENCODER, "pad_token_id": 1,
                                               "type_vocab_size": 1, "num_labels": 3, **overrides})
        cls = {"roberta_cls": transformers.RobertaForSequenceClassification,
               "roberta_mlm": transformers.RobertaForMaskedLM,
               "roberta_base": transformers.RobertaModel}[kind]
    else:
        config = transformers.BertConfig(**{**TINY_ENCODER, "pad_token_id": 0, "num_labels": 3,
                                            **overrides})
        cls = {"bert_cls": transformers.BertForSequenceClassification,
               "bert_base": transformers.BertModel,
               "bert_nopool": lambda c: transformers.BertModel(c, add_pooling_layer=False)}[kind]
    model = cls(config).eval()
    # Random init leaves norms at (1, 0) and biases at 0; perturb them so parity covers them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder, safe_serialization=True)
    return model
