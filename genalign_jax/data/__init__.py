"""Datasets, splits, ICL prompts and completion parsing for GenAlign.

Typical use in the training loop::

    from genalign_jax import data

    spec = data.get_dataset_spec(cfg.data.name)                      # "sst2", "ag_news", ...
    sizes = data.SplitSizes(icl_pool=500, golden=200, test=400)
    splits = data.build_splits(spec, "/data/sst2", sizes, seed=0)       # None: the HF cache
    builder = data.PromptBuilder(spec, splits.icl_pool, k=4, same_label=True, seed=0)
    prompts = builder.build_balanced(256)
    # the generator renders and tokenises them: generator.encode_prompts(tokenizer,
    #     [p.messages for p in prompts], chat=True, length=512)  (or [p.text ...], chat=False)
    ...generate completions...
    result = data.parse_prompt_completions(prompts, completions, data.ParseConfig.for_spec(spec))
    log(result.counts())

Submodules: :mod:`.registry` (dataset specs), :mod:`.loaders` (files / hub -> ``datasets``),
:mod:`.splits` (ICL pool / golden / test), :mod:`.prompts`, :mod:`.parsing` and :mod:`.assets`
(files embedded in asset packages).  Names are imported lazily so that ``import
genalign_jax.data.assets`` does not pay for importing ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "registry": ["DatasetSpec", "PromptTemplate", "SplitLayout", "get_dataset_spec",
                 "list_datasets", "register_dataset"],
    "assets": ["AssetNotFoundError", "rotten_tomatoes_csv_path", "smollm2_gguf_path",
               "minilm_model_dir"],
    "loaders": ["DataFileError", "DatasetUnavailableError", "clean_text", "load_labelled",
                "resolve_files"],
    "splits": ["SplitSizes", "Splits", "build_splits", "make_splits", "sample_indices"],
    "prompts": ["Prompt", "PromptBuilder", "balanced_labels", "resolve_template"],
    "parsing": ["KEPT", "REASONS", "ParseConfig", "ParseResult", "clean_completion",
                "normalize_text", "parse_completions", "parse_prompt_completions"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
