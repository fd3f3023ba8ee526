"""Sentence embeddings from a ``TextClassifier``'s encoder (for the reward's distance terms)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from genalign_jax.classifier import batching
from genalign_jax.classifier.evaluate import eval_rows
from genalign_jax.classifier.model import TextClassifier, put_rows
from genalign_jax.classifier.program import ClassifierProgram
from genalign_jax.sharding import to_host

__all__ = ["embed"]


def embed(classifier: TextClassifier,
          texts: Sequence[str] | tuple[np.ndarray, np.ndarray], *, pooling: str = "mean",
          normalize: bool = False, batch_size: int | None = None,
          show_progress: bool = False) -> np.ndarray:
    """Sentence embeddings ``[N, D]`` (float32) from the final hidden states.

    ``pooling='mean'`` averages real tokens (sentence-transformers style),
    ``'cls'`` takes the first token.  ``texts`` may also be a token batch
    ``(tokens [N, T], mask [N, T])``.  ``normalize`` scales rows to unit norm.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"embed: pooling must be 'mean' or 'cls', got {pooling!r}")
    mesh = classifier.mesh
    rows = eval_rows(classifier, batch_size)
    program = ClassifierProgram(classifier.graphdef)
    if isinstance(texts, tuple) and len(texts) == 2 and not isinstance(texts[0], str):
        batches = list(batching.array_batches(texts[0], texts[1], rows,
                                              classifier.config.pad_token_id))
        n = len(texts[0])
    else:
        if isinstance(texts, str):
            raise ValueError("embed: texts must be a sequence of strings, not a single string")
        encoded = batching.encode_texts(classifier.tokenizer, texts, classifier.max_length)
        buckets = batching.normalise_buckets(classifier.length_buckets, classifier.max_length)
        batches = list(batching.ordered_batches(encoded, rows, buckets))
        n = len(encoded)
    out = np.zeros((n, classifier.config.hidden_size), np.float32)
    pooled = [program.embed_step(classifier.params, put_rows(b.tokens, mesh),
                                 put_rows(b.mask, mesh))[pooling == "cls"]
              for b in tqdm(batches, desc="embed", disable=not show_progress, leave=False)]
    for batch, vectors in zip(batches, to_host(pooled)):
        real = batch.valid.astype(bool)
        out[batch.index[real]] = vectors[real]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
