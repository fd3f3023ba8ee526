"""A built-in character-level tokenizer for the tiny configs and tests.

Tiny random models need a tokenizer that exists without any download or asset
package.  This one maps each printable ASCII character (plus newline and tab)
to one id, unknown characters to ``<unk>``, and wraps encoded text as
``<s> ... </s>`` like RoBERTa.  It is a real ``PreTrainedTokenizerFast``, so
the rest of the code treats it like any Hugging Face tokenizer.
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def char_vocab() -> dict[str, int]:
    """Token → id: the four specials, then newline, tab and the printable ASCII characters."""
    chars = ["\n", "\t"] + [c for c in string.printable if c not in "\n\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    return vocab


def build_char_tokenizer(model_max_length: int = 1 << 20):
    """Returns the character tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", model_max_length=model_max_length)
