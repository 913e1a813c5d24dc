"""A stand-in for StoryReasoning (daniel3303/StoryReasoning) with the published schema and statistics.

    .venv/bin/python benchmarks/standin.py --out DIR [--train 3552] [--test 626] [--seed 0] [--edge-cases]

Writes a hub-style snapshot `DIR/data/{train,test}-0000i-of-0000n.parquet` (shards of at most about
`SHARD_BYTES`), read by `data=storyreasoning data.path=DIR`. By default it matches the real dataset's
size: 3,552 train and 626 test stories of 5-22 frames, 52,016 frames in all. Each story is
`<gdi imageN>` spans of grounded prose (names, dialogue in double quotes, possessives, contractions,
hyphenated words, numbers, `<gdo>`/`<gda>`/`<gdl>` tags with one or several ids) over a Zipf-like
vocabulary of several thousand words, with a cast and settings that recur through the story. Frames
are widescreen movie-still-like JPEGs (a panning story-specific background, moving figures, film
grain, letterboxed in about half the stories). The same seed writes the same bytes.

`--edge-cases` writes a small snapshot whose stories carry the prose a text pipeline must survive
(`EDGE_CASES`): an empty span, a span of tags only, curly quotes, accents, em-dashes, a ~2,000-word
paragraph and tags with several ids.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from storyreason.data.captions import strip_grounding
from storyreason.data.sources.storyreasoning import write_parquet

TRAIN_STORIES, TEST_STORIES = 3552, 626
MIN_FRAMES, MAX_FRAMES = 5, 22
MEAN_FRAMES = 52_016 / (TRAIN_STORIES + TEST_STORIES)  # 12.45
SPAN_WORDS = (50, 150)  # words per span (punctuation not counted), the stated range
SHARD_BYTES = 95_000_000
IMAGE_SIZE = (640, 360)
QUALITY = 70
GRAIN_SIGMA = 2.6
LETTERBOX_SHARE = 0.5
SPLIT_CODES = {"train": 0, "test": 1, "edge": 2}

# ---- vocabulary --------------------------------------------------------------------------------------

NAMES = (
    "Sarah John Emma Michael Anna David Laura James Maria Thomas Julia Daniel Rachel Peter Claire Robert Lucy Mark "
    "Helen Paul Sophie Frank Alice George Grace Henry Kate Jack Nora Sam Ellen Victor Ruth Oscar Ivy Leo Martha Hugo "
    "Diane Ben Rosa Carl Jane Max Vera Tom Lily Adam Irene Ray Eva Simon Clara Joe Nina Walter Mia Harry Ada Lewis "
    "Olivia Ethan Chloe Noah Megan Owen Hannah Felix Iris Caleb Judith Arthur Molly Dean Celia Roy Tessa Vincent Elsa"
).split()
FUNCTION_WORDS = (
    "the a and of to in his her with as on at from into their for by while through toward behind across over under "
    "near beside an that this it he she they them him its who which where then but not all one some other each still "
    "again just before after around against between up out down back off away there here now so if when than only "
    "very too also even another both every no what how why these those our your my"
).split()
NOUNS = (
    "room door window table street light car hand face wall floor chair desk phone bag book glass bottle cup table "
    "corner hallway stairs kitchen office bed lamp screen picture letter coat hat jacket shirt dress shoulder arm "
    "head eyes hair voice moment night morning evening sky rain crowd building city road truck bus train station "
    "bridge river tree garden fence gate house store bar restaurant counter key gun knife box paper map note "
    "camera computer keyboard mirror curtain ceiling roof doorway car seat wheel engine sign sidewalk alley park "
    "bench field hill path forest shadow silence smile expression gaze look step breath sound music radio "
    "television file folder photograph envelope wallet watch ring necklace badge uniform suit tie boots"
).split()
VERBS = (
    "walked looked turned stood held opened reached stepped watched glanced smiled pulled pushed moved sat leaned "
    "waited closed raised lowered grabbed followed entered left crossed noticed studied examined carried placed "
    "picked dropped touched pointed nodded shook hesitated paused listened whispered called answered stared "
    "approached rushed ran climbed knelt gestured adjusted checked signed handed passed settled shifted lifted"
).split()
ADJECTIVES = (
    "dark old small bright quiet empty narrow wooden tall large long short heavy soft cold warm dim busy open "
    "closed white black red blue green grey brown young worn clean crowded distant silent tense calm nervous "
    "serious tired careful sudden faint sharp broken polished modern cluttered spacious rustic elegant shabby"
).split()
ADVERBS = (
    "slowly quietly suddenly carefully quickly gently firmly softly nervously calmly briefly silently finally "
    "immediately cautiously steadily anxiously"
).split()
SAID = "said asked replied whispered muttered shouted added answered insisted admitted".split()
HYPHENATED = (
    "half-open well-lit old-fashioned black-and-white self-conscious mid-sentence long-haired dimly-lit "
    "second-floor late-night wide-eyed hand-written low-ceilinged close-up red-brick run-down"
).split()
CONTRACTIONS = "don't can't it's I'm we're won't didn't you're that's I'll isn't wasn't couldn't let's".split()
PRONOUNS = "I we you they".split()
NUMBER_WORDS = "two three four five six seven ten twenty".split()
PLACE_ADJECTIVES = "Urban Dim Narrow Busy Quiet Rainy Crowded Empty Old Modern Rural Sunlit Night Cluttered".split()
PLACES = (
    "Street|Corridor|Kitchen|Office|Bar|Forest Path|Parking Lot|Living Room|Bedroom|Warehouse|Train Station|Diner|"
    "Hospital Hallway|Rooftop|Alley|Garden|Classroom|Courtroom|Library|Harbor|Church|Stairwell"
).split("|")
PREPOSITIONS = "toward into across through beside behind past along near around over under".split()

_ONSETS = "b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr r s sh sl st t th tr v w z".split()
_VOWELS = "a e i o u ai ea ee oa ou ia".split()
_CODAS = ["", "", "n", "r", "l", "s", "t", "nd", "st", "rk", "m", "th", "ng"]
_POS_SUFFIX = {"noun": "", "verb": "ed", "adjective": "ous", "adverb": "ly"}
POS_SHARE = {"noun": 0.45, "verb": 0.3, "adjective": 0.2, "adverb": 0.05}
PSEUDO_WORDS = 5000  # the vocabulary's tail; more makes rarer words (and test words unseen in train) likelier
ZIPF_SHIFT, ZIPF_EXPONENT = 2.7, 1.05


@dataclass(frozen=True)
class Vocabulary:
    """Word pools by part of speech (real words first, then pseudo-words) and their Zipf weights."""

    pools: dict[str, tuple[str, ...]]
    weights: dict[str, np.ndarray]
    cumulative: dict[str, np.ndarray]

    def draw(self, kind: str, rng: np.random.Generator) -> str:
        """A word of `kind`, drawn by Zipf weight."""
        cumulative = self.cumulative[kind]
        return self.pools[kind][min(int(np.searchsorted(cumulative, rng.random())), len(cumulative) - 1)]


@lru_cache(maxsize=2)
def vocabulary(pseudo_words: int = PSEUDO_WORDS) -> Vocabulary:
    """The same word pools in every process: real words then `pseudo_words` syllable-built ones, Zipf-weighted
    by rank."""
    rng = np.random.default_rng(20240517)
    seen = {w.lower() for w in (*FUNCTION_WORDS, *NOUNS, *VERBS, *ADJECTIVES, *ADVERBS, *NAMES)}
    pools = {"noun": list(dict.fromkeys(NOUNS)), "verb": list(VERBS), "adjective": list(ADJECTIVES),
             "adverb": list(ADVERBS)}
    kinds = list(POS_SHARE)
    share = np.array(list(POS_SHARE.values()))
    made = 0
    while made < pseudo_words:
        syllables = int(rng.choice([1, 2, 3], p=[0.3, 0.6, 0.1]))
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        kind = kinds[int(rng.choice(len(kinds), p=share))]
        word = stem + _POS_SUFFIX[kind]
        if len(word) < 3 or word in seen:
            continue
        seen.add(word)
        pools[kind].append(word)
        made += 1
    weights = {}
    for kind, words in pools.items():
        w = 1.0 / (np.arange(len(words)) + ZIPF_SHIFT) ** ZIPF_EXPONENT
        weights[kind] = w / w.sum()
    return Vocabulary({k: tuple(v) for k, v in pools.items()}, weights, {k: np.cumsum(w) for k, w in weights.items()})


# ---- prose -------------------------------------------------------------------------------------------


@dataclass
class Cast:
    """What recurs through one story: characters (char ids), settings (bg ids), objects and favourite words."""

    names: list[str]
    places: list[str]
    objects: list[str]
    topic: dict[str, list[str]]


def story_cast(rng: np.random.Generator, vocab: Vocabulary) -> Cast:
    """A story's characters, settings, objects and the content words it keeps coming back to."""
    names = list(rng.choice(NAMES, size=int(rng.integers(1, 5)), replace=False))
    places = [f"{rng.choice(PLACE_ADJECTIVES)} {rng.choice(PLACES)}" for _ in range(int(rng.integers(1, 4)))]
    topic = {kind: [words[i] for i in rng.choice(len(words), size=12, p=vocab.weights[kind])]
             for kind, words in vocab.pools.items()}
    objects = [str(w) for w in rng.choice(topic["noun"], size=3)]
    return Cast(names, places, objects, topic)


class Prose:
    """Sentences of one story: templates mixing function words, the cast and Zipf-drawn content words."""

    def __init__(self, rng: np.random.Generator, cast: Cast, vocab: Vocabulary) -> None:
        self.rng, self.cast, self.vocab = rng, cast, vocab

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def word(self, kind: str) -> str:
        """A content word: half the time one of the story's favourites, else drawn from the whole vocabulary."""
        if self.rng.random() < 0.5:
            return self.pick(self.cast.topic[kind])
        return self.vocab.draw(kind, self.rng)

    def noun_phrase(self) -> str:
        """`the old lamp`, `a dimly-lit hallway`, `his coat`."""
        det = self.pick(("the", "the", "the", "a", "his", "her", "their"))
        adjective = ""
        if self.rng.random() < 0.45:
            adjective = (self.pick(HYPHENATED) if self.rng.random() < 0.12 else self.word("adjective")) + " "
        noun = self.word("noun")
        if det == "a" and (adjective or noun)[0] in "aeiou":
            det = "an"
        return f"{det} {adjective}{noun}"

    def character(self, k: int | None = None) -> tuple[int, str]:
        """A character id (1-based) and the tagged name."""
        k = int(self.rng.integers(len(self.cast.names))) if k is None else k
        return k + 1, f"<gdo char{k + 1}>{self.cast.names[k]}</gdo>"

    def action(self, ids: list[int]) -> str:
        """A tagged verb of one or several characters."""
        refs = " ".join(f"char{i}" for i in ids)
        return f"<gda {refs}>{self.word('verb')}</gda>"

    def place(self) -> str:
        """A tagged setting: a landmark name, or a thing several background regions show."""
        if self.rng.random() < 0.7:
            k = int(self.rng.integers(len(self.cast.places)))
            return f"<gdl bg{k + 1}>{'the ' if self.rng.random() < 0.5 else ''}{self.cast.places[k]}</gdl>"
        ids = " ".join(f"bg{i}" for i in range(1, int(self.rng.integers(2, 5))))
        return f"<gdo {ids}>the {self.pick(('walls', 'windows', 'shelves', 'trees', 'lights', 'buildings'))}</gdo>"

    def thing(self) -> str:
        """An object of the story, tagged, or an untagged noun phrase."""
        if self.rng.random() < 0.35:
            k = int(self.rng.integers(len(self.cast.objects)))
            return f"<gdo obj{k + 1}>the {self.cast.objects[k]}</gdo>"
        return self.noun_phrase()

    def utterance(self) -> str:
        """Short dialogue: contractions, pronouns, names and content words."""
        parts = [self.pick(CONTRACTIONS).capitalize() if self.rng.random() < 0.6 else self.pick(PRONOUNS).capitalize()]
        parts.append(self.word("verb") if self.rng.random() < 0.5 else self.pick(("know", "see", "need", "want")))
        parts.append(self.noun_phrase())
        if self.rng.random() < 0.3:
            when = self.pick(("for", "at", "in"))
            number = self.pick(NUMBER_WORDS)
            parts.append(f"{when} {number} {self.pick(('minutes', 'hours', 'days'))}")
        if self.rng.random() < 0.25:
            parts[-1] += f", {self.cast.names[int(self.rng.integers(len(self.cast.names)))]}"
        return " ".join(parts)

    def sentence(self) -> str:
        """One sentence of at most 20 words, from one of the templates."""
        template = int(self.rng.choice(9, p=[0.2, 0.15, 0.15, 0.1, 0.1, 0.08, 0.08, 0.07, 0.07]))
        who, name = self.character()
        if template == 0:
            tail = f" {self.word('adverb')}" if self.rng.random() < 0.3 else ""
            return f"{name} {self.action([who])}{tail} {self.pick(PREPOSITIONS)} {self.thing()}."
        if template == 1:
            return (f"{self.noun_phrase().capitalize()} {self.word('verb')} {self.pick(PREPOSITIONS)} {self.place()}, "
                    f"and {name} {self.action([who])} {self.thing()}.")
        if template == 2:
            said, mark = self.pick(SAID), self.pick((",", ",", "?", "!"))
            if self.rng.random() < 0.5:
                return f"\"{self.utterance()}{mark}\" {name} {said}."
            return f"{name} {said}, \"{self.utterance()}{'.' if mark == ',' else mark}\""
        if template == 3:
            return f"{name}'s {self.word('noun')} {self.word('verb')} {self.pick(PREPOSITIONS)} {self.noun_phrase()}."
        if template == 4:
            count = self.pick(NUMBER_WORDS).capitalize() if self.rng.random() < 0.6 else str(self.rng.integers(2, 60))
            return f"{count} {plural(self.word('noun'))} {self.word('verb')} {self.pick(PREPOSITIONS)} {self.place()}."
        if template == 5 and len(self.cast.names) > 1:
            other, other_name = self.character((who % len(self.cast.names)))
            return f"{name} and {other_name} {self.action([who, other])} {self.pick(PREPOSITIONS)} {self.place()}."
        if template == 6:
            return f"In {self.place()}, {self.noun_phrase()} {self.word('verb')} {self.word('adverb')}."
        if template == 7:
            question = self.pick(("What", "Why", "Where"))
            return f"{question} was {self.noun_phrase()} doing {self.pick(PREPOSITIONS)} {self.place()}?"
        return (f"{name} {self.action([who])} {self.noun_phrase()}, {self.word('adverb')} "
                f"{self.word('verb')} {self.pick(PREPOSITIONS)} {self.thing()}.")

    def paragraph(self, target_words: int) -> str:
        """Sentences until the caption has at least `target_words` words."""
        sentences, words = [], 0
        while words < target_words:
            sentence = self.sentence()
            sentences.append(sentence)
            words += len(span_words(sentence))
        return " ".join(sentences)


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def span_words(text: str) -> list[str]:
    """The words of a span's caption (tags stripped; `Sarah's` and `half-open` one word each, punctuation not)."""
    return _WORD.findall(strip_grounding(text))


def span_tokens(text: str) -> int:
    """Words plus punctuation marks of a span's caption."""
    caption = strip_grounding(text)
    return len(_WORD.findall(caption)) + len(re.findall(r"[^\w\s'’\-]", caption))


def target_words(rng: np.random.Generator) -> int:
    """Words of the next span: a right-skewed draw within SPAN_WORDS, leaving room for one last sentence."""
    low, high = SPAN_WORDS
    return int(min(low + rng.gamma(1.3, 8.0), high - 20))


def story_text(rng: np.random.Generator, cast: Cast, frames: int, vocab: Vocabulary) -> str:
    """`<gdi image1> ... </gdi>` ... `<gdi imageN> ... </gdi>`, one paragraph per frame."""
    prose = Prose(rng, cast, vocab)
    spans = [f"<gdi image{k}>\n{prose.paragraph(target_words(rng))}\n</gdi>" for k in range(1, frames + 1)]
    return "\n".join(spans)


def chain_of_thought(cast: Cast) -> str:
    """A short analysis in the published layout: characters and settings with their ids."""
    characters = "\n".join(f"- char{k}: {name}" for k, name in enumerate(cast.names, 1))
    settings = "\n".join(f"- bg{k}: {place}" for k, place in enumerate(cast.places, 1))
    return f"## Characters\n{characters}\n## Settings\n{settings}\n"


# ---- frames ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameStyle:
    """Image settings shared by every frame."""

    size: tuple[int, int] = IMAGE_SIZE
    quality: int = QUALITY
    grain_sigma: float = GRAIN_SIGMA


@lru_cache(maxsize=4)
def grain(seed: int, size: tuple[int, int], sigma: float) -> Image.Image:
    """Film grain, centred on 128, a margin wider than a frame (frames crop it at random offsets)."""
    width, height = size
    noise = np.random.default_rng([seed, 99]).normal(128, sigma, (height + 64, width + 64))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB")


def muted(rng: np.random.Generator, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Film-like colours: a brightness with a little chroma, (*shape, 3) uint8."""
    light = rng.uniform(15, 210, (*shape, 1))
    return np.clip(light + rng.normal(0, 30, (*shape, 3)), 0, 255).astype(np.uint8)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def scenery(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A story's static background, wider than a frame: smooth colour fields, a gradient and a few blocks."""
    fields = Image.fromarray(muted(rng, (5, 9))).resize((width, height), Image.BICUBIC)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = muted(rng).astype(np.float32), muted(rng).astype(np.float32)
    gradient = np.broadcast_to((top * (1 - ramp) + bottom * ramp).astype(np.uint8), (height, width, 3))
    picture = Image.blend(fields, Image.fromarray(np.ascontiguousarray(gradient)), float(rng.uniform(0.3, 0.7)))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):  # walls, doors, windows
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.03, 0.2) * width, rng.uniform(0.1, 0.6) * height
        draw.rectangle((x, y, x + w, y + h), fill=_rgb(muted(rng)))
    return picture


@dataclass
class Figure:
    """A moving figure: an ellipse body and a head, drifting across the shot."""

    x: float
    y: float
    r: float
    vx: float
    vy: float
    colour: tuple[int, int, int]


def figures(rng: np.random.Generator, width: int, height: int) -> list[Figure]:
    """The figures of one shot."""
    return [Figure(float(rng.uniform(0.1, 0.9) * width), float(rng.uniform(0.4, 0.8) * height),
                   float(rng.uniform(0.05, 0.14) * height), float(rng.uniform(-0.02, 0.02) * width),
                   float(rng.uniform(-0.01, 0.01) * height), _rgb(muted(rng)))
            for _ in range(int(rng.integers(2, 6)))]


def letterbox_bar(size: tuple[int, int]) -> int:
    """Rows of black at top and bottom that letterbox a 2.39:1 picture into the frame."""
    width, height = size
    return max(1, (height - round(width / 2.39)) // 2)


def story_frames(rng: np.random.Generator, frames: int, style: FrameStyle, seed: int) -> list[bytes]:
    """JPEGs of one story: a camera panning over its scenery, figures moving, a new shot now and then."""
    width, height = style.size
    pan = width // 4
    background = scenery(rng, width + pan, height)
    noise = grain(seed, style.size, style.grain_sigma)
    bar = letterbox_bar(style.size) if rng.random() < LETTERBOX_SHARE else 0
    shot, offset, step = figures(rng, width, height), rng.uniform(0, pan), rng.uniform(-pan / 20, pan / 20)
    out = []
    for k in range(frames):
        if k and rng.random() < 0.15:  # a cut: another angle on the same place
            shot, offset = figures(rng, width, height), rng.uniform(0, pan)
        offset = float(np.clip(offset + step, 0, pan))
        image = background.crop((int(offset), 0, int(offset) + width, height))
        draw = ImageDraw.Draw(image)
        for f in shot:
            f.x, f.y = f.x + f.vx, f.y + f.vy
            draw.ellipse((f.x - f.r, f.y - 0.4 * f.r, f.x + f.r, f.y + 2.2 * f.r), fill=f.colour)
            head = 0.55 * f.r
            draw.ellipse((f.x - head, f.y - 2.2 * head, f.x + head, f.y - 0.1 * head), fill=(224, 172, 140))
        gx, gy = int(rng.integers(64)), int(rng.integers(64))
        image = ImageChops.add(image, noise.crop((gx, gy, gx + width, gy + height)), 1.0, -128)
        if bar:
            draw = ImageDraw.Draw(image)
            draw.rectangle((0, 0, width - 1, bar - 1), fill=(0, 0, 0))
            draw.rectangle((0, height - bar, width - 1, height - 1), fill=(0, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=style.quality)
        out.append(buffer.getvalue())
    return out


# ---- stories, shards and the snapshot ----------------------------------------------------------------


def frame_counts(stories: int, rng: np.random.Generator) -> np.ndarray:
    """Frames per story within MIN_FRAMES..MAX_FRAMES, right-skewed, summing to round(MEAN_FRAMES * stories)."""
    counts = np.clip(np.rint(MIN_FRAMES + rng.gamma(3.0, (MEAN_FRAMES - MIN_FRAMES) / 3.0, stories)),
                     MIN_FRAMES, MAX_FRAMES).astype(np.int64)
    goal = round(MEAN_FRAMES * stories)
    while (gap := goal - int(counts.sum())) != 0:
        room = counts < MAX_FRAMES if gap > 0 else counts > MIN_FRAMES
        chosen = rng.choice(np.flatnonzero(room), size=min(abs(gap), int(room.sum())), replace=False)
        counts[chosen] += 1 if gap > 0 else -1
    return counts


def plan(train: int, test: int, seed: int) -> dict[str, np.ndarray]:
    """Frames of every story of each split."""
    return {split: frame_counts(stories, np.random.default_rng([seed, SPLIT_CODES[split], 2**31]))
            for split, stories in (("train", train), ("test", test))}


@dataclass(frozen=True)
class StoryJob:
    """Everything a worker needs to write one story."""

    split: str
    index: int
    frames: int
    seed: int
    style: FrameStyle
    pseudo_words: int = PSEUDO_WORDS


def make_story(job: StoryJob) -> dict:
    """One parquet row, drawn from its own generator: the same story whichever worker writes it."""
    rng = np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index])
    vocab = vocabulary(job.pseudo_words)
    cast = story_cast(rng, vocab)
    story_id = f"{job.split}-{job.index:05d}"
    images = story_frames(rng, job.frames, job.style, job.seed)
    return {
        "story_id": story_id,
        "images": [{"bytes": b, "path": f"{story_id}_{k:02d}.jpg"} for k, b in enumerate(images, 1)],
        "frame_count": job.frames,
        "chain_of_thought": chain_of_thought(cast),
        "story": story_text(rng, cast, job.frames, vocab),
    }


def _row_bytes(row: dict) -> int:
    return sum(len(image["bytes"]) for image in row["images"])


def write_shards(rows: Iterator[dict], folder: Path, split: str, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write rows as `split-0000i-of-0000n.parquet` files of at most about `shard_bytes` of images each."""
    parts: list[Path] = []
    buffer: list[dict] = []
    buffered = 0
    stats = {"stories": 0, "frames": 0, "jpeg_bytes": 0, "span_words": [], "span_tokens": []}

    def flush() -> None:
        nonlocal buffered
        part = folder / f"part-{split}-{len(parts):05d}.parquet"
        write_parquet(buffer, part)
        parts.append(part)
        buffer.clear()
        buffered = 0

    for row in rows:
        buffer.append(row)
        stats["stories"] += 1
        stats["frames"] += row["frame_count"]
        size = _row_bytes(row)
        stats["jpeg_bytes"] += size
        buffered += size
        for span in re.findall(r"<gdi image\d+>(.*?)</gdi>", row["story"], re.DOTALL):
            stats["span_words"].append(len(span_words(span)))
            stats["span_tokens"].append(span_tokens(span))
        if buffered >= shard_bytes:
            flush()
    if buffer:
        flush()
    for i, part in enumerate(parts):
        part.rename(folder / f"{split}-{i:05d}-of-{len(parts):05d}.parquet")
    return stats


def _stories(jobs: list[StoryJob], workers: int) -> Iterator[dict]:
    """Rows in job order, written by `workers` processes (or this one)."""
    if workers <= 1:
        yield from map(make_story, jobs)
        return
    with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
        yield from pool.imap(make_story, jobs, chunksize=4)


def summary(per_split: dict[str, dict], seconds: float, out: Path) -> dict:
    """Stories, frames, bytes and prose figures of a written snapshot."""
    words = [w for s in per_split.values() for w in s["span_words"]]
    tokens = [t for s in per_split.values() for t in s["span_tokens"]]
    frames = sum(s["frames"] for s in per_split.values())
    jpeg = sum(s["jpeg_bytes"] for s in per_split.values())
    return {
        "stories": {split: s["stories"] for split, s in per_split.items()},
        "frames": frames,
        "frames_per_split": {split: s["frames"] for split, s in per_split.items()},
        "jpeg_bytes": jpeg,
        "mean_jpeg_bytes": jpeg / max(frames, 1),
        "bytes": sum(f.stat().st_size for f in out.rglob("*.parquet")),
        "span_words": {"min": min(words, default=0), "median": statistics.median(words or [0]),
                       "max": max(words, default=0)},
        "span_tokens_median": statistics.median(tokens or [0]),
        "seconds": seconds,
    }


def _fresh(out: Path, overwrite: bool) -> Path:
    """A temporary folder next to `out`, to be renamed onto it when complete."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (overwrite=True replaces it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def write_standin(
    out: Path,
    train: int = TRAIN_STORIES,
    test: int = TEST_STORIES,
    seed: int = 0,
    image_size: tuple[int, int] = IMAGE_SIZE,
    quality: int = QUALITY,
    workers: int | None = None,
    shard_bytes: int = SHARD_BYTES,
    pseudo_words: int = PSEUDO_WORDS,
    overwrite: bool = False,
) -> dict:
    """Write the stand-in snapshot to `out` (`out/data/*.parquet`); return its statistics (see `summary`)."""
    start = time.perf_counter()
    out = Path(out)
    tmp = _fresh(out, overwrite)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    style = FrameStyle(tuple(image_size), quality)
    vocabulary(pseudo_words)  # once, before the workers fork
    try:
        (tmp / "data").mkdir()
        per_split = {}
        for split, counts in plan(train, test, seed).items():
            jobs = [StoryJob(split, i, int(n), seed, style, pseudo_words) for i, n in enumerate(counts)]
            per_split[split] = write_shards(_stories(jobs, workers), tmp / "data", split, shard_bytes)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary(per_split, time.perf_counter() - start, out)


# ---- edge cases --------------------------------------------------------------------------------------

_LONG = " ".join(
    f"<gdo char1>Zoë</gdo> <gda char1>walked</gda> past the café’s {n}th window — slowly, “carefully” — "
    f"and {'paused' if n % 2 else 'didn’t stop'}, her hand on the half-open door." for n in range(1, 101)
)
EDGE_CASES: dict[str, dict[int, str]] = {  # story id -> {frame number: span text replacing the regular one}
    "edge-empty-span": {2: ""},
    "edge-tags-only": {1: "<gdo char1>Sarah</gdo> <gda char1>runs</gda>", 3: "<gdo char1></gdo><gdl bg1></gdl>"},
    "edge-curly-quotes": {
        1: "“Wait,” <gdo char1>Zoë</gdo> <gda char1>said</gda>. ‘Not yet,’ she thought — the café was "
           "empty…",
        4: "<gdo char2>Renée</gdo>’s naïve smile didn’t fade; “Où est Chloë?” she asked at the "
           "crème-brûlée stand.",
    },
    "edge-em-dashes": {2: "The door—half open—creaked. <gdo char1>José</gdo> <gda char1>waited</gda> — and "
                          "waited —\nuntil the lights went out — all 12 of them."},
    "edge-long-paragraph": {3: _LONG},
    "edge-multi-id": {
        1: "<gdo char1 char2 char3>They</gdo> <gda char1 char2 char3>gathered</gda> by <gdo bg1 bg2 bg3 bg4>the walls"
           "</gdo> of <gdl bg1 bg2>Urban Street</gdl>, <gdo obj1 obj2>two lamps</gdo> between them.",
        2: "<gdo char1>Sarah</gdo> and <gdo char2>Tom</gdo> <gda char1 char2>walked</gda> into "
           "<gdl bg3>Hospital Corridor</gdl>.",
    },
}
EDGE_FRAMES = 6


def edge_case_stories(seed: int = 0) -> dict[str, str]:
    """Story id -> story text of EDGE_CASES frames, each a regular story with its edge-case spans swapped in."""
    stories = {}
    for n, (story_id, spans) in enumerate(EDGE_CASES.items()):
        rng = np.random.default_rng([seed, SPLIT_CODES["edge"], n])
        vocab = vocabulary()
        prose = Prose(rng, story_cast(rng, vocab), vocab)
        texts = [spans.get(k, prose.paragraph(target_words(rng))) for k in range(1, EDGE_FRAMES + 1)]
        stories[story_id] = "\n".join(f"<gdi image{k}>{text}</gdi>" for k, text in enumerate(texts, 1))
    return stories


def write_edge_cases(out: Path, seed: int = 0, image_size: tuple[int, int] = (160, 90), train: int = 8,
                     test: int = 3, overwrite: bool = False) -> dict:
    """A small snapshot: every EDGE_CASES story in train (the last also in test, as `<id>-test`) among `train`
    and `test` regular stories; returns its statistics."""
    start = time.perf_counter()
    out = Path(out)
    tmp = _fresh(out, overwrite)
    style = FrameStyle(tuple(image_size))
    edge_rows = []
    for n, (story_id, text) in enumerate(edge_case_stories(seed).items()):
        rng = np.random.default_rng([seed, SPLIT_CODES["edge"], n, 1])
        images = story_frames(rng, EDGE_FRAMES, style, seed)
        edge_rows.append({"story_id": story_id, "frame_count": EDGE_FRAMES, "chain_of_thought": "", "story": text,
                          "images": [{"bytes": b, "path": f"{story_id}_{k:02d}.jpg"} for k, b in enumerate(images, 1)]})
    try:
        (tmp / "data").mkdir()
        per_split = {}
        for split, counts in plan(train, test, seed).items():
            last = edge_rows[-1]
            extra = edge_rows if split == "train" else [{**last, "story_id": f"{last['story_id']}-test"}]
            jobs = [StoryJob(split, i, int(n), seed, style) for i, n in enumerate(counts)]
            rows = [*extra, *map(make_story, jobs)]
            per_split[split] = write_shards(iter(rows), tmp / "data", split)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary(per_split, time.perf_counter() - start, out)


# ---- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="snapshot folder to write (DIR/data/*.parquet)")
    parser.add_argument("--train", type=int, default=TRAIN_STORIES, help="train stories")
    parser.add_argument("--test", type=int, default=TEST_STORIES, help="test stories")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=IMAGE_SIZE, metavar=("W", "H"), help="frame size")
    parser.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality")
    parser.add_argument("--pseudo-words", type=int, default=PSEUDO_WORDS, help="invented words in the vocabulary")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: min(2, cores))")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--edge-cases", action="store_true", help="write the small edge-case snapshot instead")
    args = parser.parse_args(argv)
    if args.edge_cases:
        stats = write_edge_cases(args.out, args.seed, overwrite=args.overwrite)
    else:
        stats = write_standin(args.out, args.train, args.test, args.seed, tuple(args.size), args.quality,
                              args.workers, pseudo_words=args.pseudo_words, overwrite=args.overwrite)
    print(json.dumps(stats, indent=2))
    print(f"{sum(stats['stories'].values())} stories, {stats['frames']} frames, mean JPEG "
          f"{stats['mean_jpeg_bytes'] / 1000:.1f} kB, median {stats['span_words']['median']} words "
          f"({stats['span_tokens_median']} with punctuation) per span, {stats['bytes'] / 1e6:.0f} MB on disk, "
          f"{stats['seconds']:.0f} s; written to {args.out}")
    return stats


if __name__ == "__main__":
    main()
