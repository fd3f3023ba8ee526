"""The classifier stage: fine-tune a RoBERTa/BERT classifier on synthetic data, score it on
real data.

Each epoch the loop trains a fresh classifier on the generator's kept examples and reads its loss on
the real ("golden") set; the same encoder embeds the examples for the reward's distance terms:

    clf = load_pretrained_classifier("roberta-base", num_labels=2)      # once per run
    trained, stats = train_classifier(clf, texts, labels, ClassifierConfig(...), rng)
    result = evaluate(trained, golden_texts, golden_labels)            # result.loss
    vectors = embed(trained, texts, pooling="mean")

Modules, in data-path order:

* ``encoder_config`` — ``EncoderConfig``, presets, HF ``config.json`` parsing;
* ``encoder`` — the NNX encoder (RoBERTa/BERT, scanned layers) and classification head;
* ``weights`` — HF safetensors checkpoints into the encoder (via ``genalign_jax.hf_checkpoint``);
* ``model`` — ``TextClassifier`` (graph, weights, tokenizer, mesh) and
  ``load_pretrained_classifier``;
* ``batching`` — tokenising texts into fixed-row, length-bucketed batches;
* ``program`` — ``ClassifierProgram``: the compiled train/eval/embed steps of one graph;
* ``train`` — ``ClassifierConfig``, ``train_classifier``, ``TrainStats``;
* ``evaluate`` — ``evaluate``, ``predict_logits``, ``metrics_from_logits``, ``EvalResult``;
* ``embed`` — sentence embeddings;
* ``influence`` (+ ``influence_balance``) — each training example's influence on the golden
  loss (TracIn over kept checkpoints), the reward's per-sample golden credit.

No module caches models or compiled functions by name: the caller holds the loaded
``TextClassifier``; compiled steps are keyed by the hashable ``ClassifierProgram``.
"""

from genalign_jax.classifier.embed import embed
from genalign_jax.classifier.encoder import EncoderClassifier, create_encoder_classifier
from genalign_jax.classifier.encoder_config import PRESETS, EncoderConfig, get_preset
from genalign_jax.classifier.evaluate import (EvalResult, evaluate, metrics_from_logits,
                                              predict_logits)
from genalign_jax.classifier.model import (TextClassifier, build_classifier,
                                           load_pretrained_classifier)
from genalign_jax.classifier.program import ClassifierProgram
from genalign_jax.classifier.train import ClassifierConfig, TrainStats, train_classifier

__all__ = [
    "ClassifierConfig",
    "ClassifierProgram",
    "EncoderClassifier",
    "EncoderConfig",
    "EvalResult",
    "PRESETS",
    "TextClassifier",
    "TrainStats",
    "build_classifier",
    "create_encoder_classifier",
    "embed",
    "evaluate",
    "get_preset",
    "load_pretrained_classifier",
    "metrics_from_logits",
    "predict_logits",
    "train_classifier",
]
