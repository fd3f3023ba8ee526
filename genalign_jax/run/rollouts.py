"""Stage 1 of an epoch: label-balanced ICL prompts → sampled completions → parsed examples.

``sample_rollouts(components, n, rng_seed, key)`` builds ``n`` prompts (data), shapes them to the
run's static prompt length (or the smallest ``generator.prompt_buckets`` width that holds the
epoch's longest prompt) and samples one completion each in chunks of
``generator.sampling.batch_size`` (generator), then parses every completion into exactly one
outcome (data).  The sampler outputs are kept per chunk: PPO scores exactly those rows.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from genalign_jax import data as data_lib
from genalign_jax import generator as gen
from genalign_jax import sharding as sharding_lib
from genalign_jax.run.components import Components

__all__ = ["Rollouts", "sample_rollouts", "distinct_n"]


@dataclasses.dataclass
class Rollouts:
    """One epoch's generations: prompts, sampler outputs per chunk, texts and their parse."""

    prompts: list[data_lib.Prompt]
    samples: list[gen.SampleOutput]
    completions: list[str]
    parse: data_lib.ParseResult
    generated_tokens: int
    seconds: float
    truncated_prompts: int = 0

    @property
    def prompt_width(self) -> int:
        """Prompt columns the epoch ran at (``max_prompt_tokens`` or a prompt bucket)."""
        return int(self.samples[0].prompt_length)

    def completion_lengths(self) -> np.ndarray:
        """Tokens generated per row (stop token included), over every chunk."""
        return np.concatenate([sharding_lib.to_host(s.lengths) for s in self.samples])


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (0 if none)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_rollouts(components: Components, n: int, rng_seed: Any, key: jax.Array, *,
                    use_lora: bool = True, show_progress: bool = False,
                    progress_desc: str = "generate") -> Rollouts:
    """Samples ``n`` label-balanced examples; ``rng_seed`` draws the prompts, ``key`` the tokens."""
    config, g = components.config, components.generator
    start = time.perf_counter()
    prompts = components.data.prompt_builder.build_balanced(n, rng=np.random.default_rng(rng_seed))
    chat = config.generator.chat
    forms = [list(p.messages) for p in prompts] if chat else [p.text for p in prompts]
    tokens, mask, truncated = gen.encode_prompts(g.tokenizer, forms, chat=chat,
                                                 length=config.generator.max_prompt_tokens,
                                                 buckets=config.generator.prompt_buckets)
    sampling = g.sampling.replace(use_lora=use_lora)
    batch = config.generator.sampling.batch_size
    samples, completions, generated = [], [], 0
    for i in tqdm(range(0, n, batch), desc=progress_desc, disable=not show_progress, leave=False):
        out = gen.generate(g.model, tokens[i:i + batch], mask[i:i + batch], sampling,
                           jax.random.fold_in(key, i))
        samples.append(out)
        host = sharding_lib.to_host(out)  # also gathers rows held by other processes
        completions.extend(gen.decode_completions(g.tokenizer, host))
        generated += int(host.lengths.sum())
    parse = data_lib.parse_prompt_completions(prompts, completions, components.data.parse_config)
    return Rollouts(prompts, samples, completions, parse, generated,
                    time.perf_counter() - start, truncated)
