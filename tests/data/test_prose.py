"""The built-in world told in paragraphs (`data=prose`): deterministic, long and varied enough, learnable."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from storyreason.data.sources.prose import NAMES
from storyreason.data.sources.synthetic import SyntheticWorld
from storyreason.data.stories import SPLITS
from storyreason.data.tokenizer import normalize_text, word_tokens
from storyreason.errors import ConfigError
from tests.conftest import CONF

COUNTS = {"train": 8, "val": 3, "test": 3}


def prose_world(seed: int = 0, **kwargs: object) -> SyntheticWorld:
    return SyntheticWorld(num_stories=COUNTS, story_length=8, seed=seed, captions="prose", **kwargs)


def tokens(caption: str) -> list[str]:
    """The caption's tokens as the project's word tokenizer counts them (words and punctuation marks)."""
    return word_tokens(normalize_text(caption))


def sentences(caption: str) -> int:
    return len(re.findall(r"\.(?:\s|$)", caption))


def test_same_seed_gives_identical_paragraphs_and_another_seed_other_ones() -> None:
    first, second, other = prose_world(seed=3).load(), prose_world(seed=3).load(), prose_world(seed=4).load()
    for split in SPLITS:
        assert first[split].captions == second[split].captions
        assert first[split].oracle.captions == second[split].oracle.captions
        assert first[split].captions != other[split].captions


def test_prose_tells_the_list_worlds_stories_frame_for_frame_under_its_own_cache_key() -> None:
    """Same frames and oracle frames as data=synthetic (prose draws from its own stream), but a cache key of
    its own, so a cached list world is never read as the prose one."""
    prose, plain = prose_world(), SyntheticWorld(num_stories=COUNTS, story_length=8)
    for split, data in prose.load().items():
        listed = plain.load()[split]
        np.testing.assert_array_equal(data.frames, listed.frames)
        np.testing.assert_array_equal(data.oracle.index, listed.oracle.index)
        np.testing.assert_array_equal(data.oracle.frames, listed.oracle.frames)
        assert data.captions != listed.captions
    assert prose.cache_key() != plain.cache_key()
    assert "captions" not in plain.cache_key()  # the list world's cache entries stay valid


def test_a_story_keeps_its_style_and_names_and_each_frame_updates_its_facts() -> None:
    """Consecutive paragraphs share their opening setting words and the bystander's sentence, and every name
    of a story recurs in each of its frames until the object leaves; the step counter moves on."""
    world = prose_world(p_appear=0.0, p_leave=0.0, p_recolour=0.0)
    for index in range(6):
        _, _, captions, _ = world.story(0, index)
        names = [{n for n in NAMES if re.search(rf"\b{n}\b", c)} for c in captions]
        assert all(n == names[0] for n in names) and len(names[0]) >= 2  # the objects and the bystander
        assert len({c.rsplit(". ", 1)[1] for c in captions}) == 1  # the bystander's sentence
        assert len(set(captions)) == len(captions)  # every frame says something new (at least its step)


def test_the_oracle_paragraph_is_the_next_one_without_its_random_events() -> None:
    """With events frequent: where a frame has none, no oracle is stored (the frame is its own oracle);
    where it has some, the oracle paragraph is the same paragraph minus the events' sentence and any object
    that appeared, written in the same style."""
    world = prose_world(p_appear=0.3, p_leave=0.0, p_recolour=0.3)
    seen = 0
    for index in range(COUNTS["train"]):
        _, _, captions, oracles = world.story(0, index)
        for t, (_, oracle) in oracles.items():
            seen += 1
            assert oracle != captions[t]
            assert oracle.split(".")[0] == captions[t].split(".")[0]  # the same setting at the same step
            assert oracle.rsplit(". ", 1)[1] == captions[t].rsplit(". ", 1)[1]  # the same bystander
            assert len(tokens(oracle)) < len(tokens(captions[t]))
            assert sentences(oracle) == sentences(captions[t]) - 1 - (" appear" in captions[t] or " arrives" in
                                                                         captions[t] or " enters" in captions[t])
    assert seen > 0


def test_an_unknown_caption_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.source.captions must be one of"):
        SyntheticWorld(num_stories=COUNTS, captions="poetry")


def test_the_default_prose_train_split_has_paragraphs_of_the_promised_length_and_vocabulary() -> None:
    """data=prose's train split (the real config): 40-130 tokens per paragraph (median >= 60), 3-6
    sentences, >= 50 character names and >= 800 distinct words and marks; and max_caption_len is auto."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data=prose"])
    assert cfg.data.max_caption_len == "auto"
    source = instantiate(cfg.data.source)
    captions = [c for i in range(source.num_stories["train"]) for c in source.story(0, i)[2]]
    lengths = np.array([len(tokens(c)) for c in captions])
    assert 40 <= lengths.min() and lengths.max() <= 130 and np.median(lengths) >= 60, (
        lengths.min(), np.median(lengths), lengths.max())
    counts = [sentences(c) for c in captions]
    assert min(counts) >= 3 and max(counts) <= 6
    vocabulary = {t for c in captions for t in tokens(c)}
    assert len(vocabulary) >= 800
    assert len(vocabulary & set(NAMES)) >= 50
