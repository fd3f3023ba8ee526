"""Completion parsing: cleaning, every rejection reason, counts that add up."""

from __future__ import annotations

import numpy as np
import pytest

from genalign_jax.data.parsing import (
    KEPT,
    REASONS,
    ParseConfig,
    clean_completion,
    normalize_text,
    parse_completions,
    parse_prompt_completions,
)
from genalign_jax.data.prompts import PromptBuilder

CFG = ParseConfig.for_spec("sst2")


@pytest.mark.parametrize("raw, cleaned", [
    ('  "A truly wonderful film."\nLabel: positive', "A truly wonderful film."),
    ("Here is a new example:\n\nThe plot drags on forever.", "The plot drags on forever."),
    ("Sure! Here's one:", ""),
    ("Text: 1. Positive: a joyous, moving ride", "a joyous, moving ride"),
    ("A dull, lifeless film (negative)", "A dull, lifeless film"),
    ("Label: negative - the acting is wooden", "the acting is wooden"),
    ("\u201cGreat fun for the whole family\u201d", "Great fun for the whole family"),
    ("it's the movies' best year Label: positive Text: more", "it's the movies' best year"),
    ("Great fun<|im_end|>ignored", "Great fun"),
    ("Example 3: 'a slow burn' ", "a slow burn"),
    ('"unbalanced quote at the start', "unbalanced quote at the start"),
    ("'90s nostalgia done right", "'90s nostalgia done right"),
    ("positive words about a negative-space design", "positive words about a negative-space design"),
    ("- a   film\twith  spaces", "a film with spaces"),
    ("Example-driven storytelling at its best", "Example-driven storytelling at its best"),
    ("Review - a slow burn", "a slow burn"),
    ("\n\n", ""),
])
def test_clean_completion(raw, cleaned):
    assert clean_completion(raw, CFG) == cleaned


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!! ") == "hello world"
    assert normalize_text("Ｃafé—bar") == "café bar"
    assert normalize_text("...") == ""


def _check_total(result, n):
    assert sum(result.counts().values()) == n == len(result.reasons_per_completion)
    assert set(result.rejected) == set(REASONS)
    assert result.num_kept == len(result.kept_labels) == len(result.kept_indices)


def test_every_reason():
    completions = [
        "A truly wonderful film .",              # kept
        "a truly WONDERFUL film!",               # duplicate (exact after normalisation)
        "A truly wonderful film indeed",         # near duplicate (Jaccard 4/5)
        "bad",                                   # too short
        "   ",                                   # empty
        "...",                                   # empty (no letters or digits)
        "Copy of the ICL example here",          # copy of its prompt's ICL example
        " ".join(["word"] * 201),                # too long
        "Something totally different here",      # kept
        "copy of the icl example here too, but new", # kept: not similar enough to the ICL text
    ]
    labels = [1, 1, 1, 0, 0, 0, 1, 0, 0, 1]
    icl = [["An unrelated real example"]] * 6 + [["copy of the icl example here!"]] + [[]] * 3
    result = parse_completions(completions, labels, icl, CFG)
    assert result.reasons_per_completion == [
        KEPT, "duplicate", "near_duplicate", "too_short", "empty", "empty",
        "copy_of_icl_example", "too_long", KEPT, KEPT,
    ]
    assert result.rejected == {"empty": 2, "too_short": 1, "too_long": 1,
                               "copy_of_icl_example": 1, "duplicate": 1, "near_duplicate": 1}
    assert result.kept_texts == [completions[0], completions[8], completions[9]]
    assert result.kept_labels == [1, 0, 1] and result.kept_indices == [0, 8, 9]
    assert result.cleaned_texts[4] == ""
    _check_total(result, len(completions))
    assert result.kept_fraction() == pytest.approx(0.3)


def test_near_copy_of_icl_example_and_other_prompts_examples():
    icl = [["the movie is a total mess from start to finish"], ["another example entirely here"]]
    comps = ["The movie is a total mess from start to finish!!", "the movie is a total mess from start"]
    result = parse_completions(comps, [0, 0], icl, CFG)
    # Only the prompt's own ICL examples count as copies; the second is then a near duplicate.
    assert result.reasons_per_completion == ["copy_of_icl_example", KEPT]
    result = parse_completions(comps, [0, 0], None, CFG)
    assert result.reasons_per_completion == [KEPT, "near_duplicate"]


def test_thresholds_and_lengths_are_configurable():
    comps = ["one two three four five", "one two three four six"]  # Jaccard 4/6
    assert parse_completions(comps, [0, 0], None, CFG).rejected["near_duplicate"] == 0
    strict = ParseConfig(near_duplicate_threshold=0.6)
    assert parse_completions(comps, [0, 0], None, strict).rejected["near_duplicate"] == 1
    off = ParseConfig(near_duplicate_threshold=1.01)
    assert parse_completions(comps * 2, [0] * 4, None, off).rejected == {
        **{r: 0 for r in REASONS}, "duplicate": 2}
    short = ParseConfig(min_words=1, max_words=2)
    assert parse_completions(["hi", "a b c"], [0, 1], None, short).reasons_per_completion == [
        KEPT, "too_long"]


def test_duplicates_compare_with_kept_examples_only():
    # B is rejected as a near duplicate of A; C (equal to B) is therefore compared with A only.
    comps = ["alpha beta gamma delta epsilon", "alpha beta gamma delta epsilon zeta",
             "alpha beta gamma delta epsilon zeta"]
    result = parse_completions(comps, [0, 0, 0], None, ParseConfig(near_duplicate_threshold=0.8))
    assert result.reasons_per_completion == [KEPT, "near_duplicate", "near_duplicate"]


def test_large_random_batch_counts_add_up():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    comps = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(1500)]
    result = parse_completions(comps, [0] * len(comps), [[comps[0]]] * len(comps), CFG)
    _check_total(result, len(comps))
    assert all(r in REASONS or r == KEPT for r in result.reasons_per_completion)
    kept = [normalize_text(t) for t in result.kept_texts]
    assert len(kept) == len(set(kept))


def test_empty_batch_and_length_mismatch():
    result = parse_completions([], [], None, CFG)
    _check_total(result, 0)
    assert result.kept_fraction() == 0.0
    with pytest.raises(ValueError, match="target labels"):
        parse_completions(["a b c"], [0, 1])
    with pytest.raises(ValueError, match="ICL example lists"):
        parse_completions(["a b c"], [0], [[], []])


def test_parse_prompt_completions():
    pool = {"text": ["the film is a joy to watch", "a dreary slog of a movie",
                     "warm and funny throughout", "tedious and far too long"],
            "label": [1, 0, 1, 0]}
    prompts = PromptBuilder("sst2", pool, k=2, same_label=True, seed=0).build([1, 0])
    comps = [f' "{prompts[0].icl_texts[0]}"\n', "An utterly charmless remake of a classic.\n"]
    result = parse_prompt_completions(prompts, comps, CFG)
    assert result.reasons_per_completion == ["copy_of_icl_example", KEPT]
    assert result.kept_labels == [0]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        parse_prompt_completions(prompts, comps[:1], CFG)
