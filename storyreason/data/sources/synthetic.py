"""The built-in story world: seeded, procedural stories of shapes that move, bounce and change.

Each story has a flat background and 1-3 objects (shape x colour) moving diagonally at constant
speed and bouncing off the walls. Now and then an object appears, leaves or changes colour. Every
frame gets a caption from a small grammar naming each object's colour, shape, 3x3 region and the
direction it moves next, followed by any event of that frame, e.g.
``red circle top left down right . a blue square appears .``
The next frame follows from the context (positions, velocities, bounces) but differs from the last
one, so copy-last baselines are strong yet beatable. The world knows its state, so it also writes the
oracle of each frame (`stories.Oracle`): the frame and caption the deterministic dynamics give, without
that step's random events: what the context determines, the rest being chance.

With `captions="prose"` (`data=prose`) the same stories get paragraphs instead (`prose.ProseStyle`);
their frames, and the list captions of the default, are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from storyreason.data.sources.prose import Event, ProseStyle, Thing
from storyreason.data.stories import SPLITS, Oracle, StorySplit
from storyreason.errors import ConfigError

T = TypeVar("T")
Surprises = dict[int, tuple[np.ndarray, str]]  # frame t of a story -> its oracle frame and caption

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (50, 190, 70),
    "blue": (55, 95, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((25, 25, 35), (20, 55, 35), (60, 40, 25), (25, 40, 70), (70, 70, 70))
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
CAPTIONS = ("list", "prose")
PROSE_VERSION = 1  # of the prose captions' generation, in the prose world's cache key
REGION_GRID = 8  # each frame's regions are given on an 8x8 grid of cells (a 64x64 frame's latent map)
NO_OBJECT = 9  # the region label of a cell whose centre no object covers
REGION_CLASSES = NO_OBJECT + 1


@dataclass
class _Object:
    shape: str
    colour: str
    x: float
    y: float
    vx: float
    vy: float
    r: int
    ident: int = -1  # the order the object entered its story in (-1 until it has one)


@dataclass
class _Step:
    """One frame of a story being simulated: its objects after the step's events, the walls each bounced
    off on its way in, the events, and the objects as the dynamics alone left them (`expected`)."""

    t: int
    background: tuple[int, int, int]
    style: ProseStyle | None
    objects: list[_Object]
    walls: dict[int, tuple[str, ...]]
    events: list[Event]
    expected: list[_Object]


class SyntheticWorld:
    """Story source for `data=synthetic`: generates `num_stories[split]` stories per split."""

    def __init__(
        self,
        num_stories: dict[str, int],
        story_length: int = 8,
        image_size: int = 64,
        seed: int = 0,
        max_objects: int = 3,
        radius: tuple[int, int] = (10, 14),
        speed: tuple[float, float] = (6.0, 9.0),
        p_appear: float = 0.02,
        p_leave: float = 0.01,
        p_recolour: float = 0.015,
        captions: str = "list",
    ) -> None:
        missing = [s for s in SPLITS if s not in num_stories]
        if missing:
            raise ConfigError(f"data.source.num_stories is missing split(s) {missing}")
        if story_length < 2:
            raise ConfigError(f"data.source.story_length must be >= 2, got {story_length}")
        if captions not in CAPTIONS:
            raise ConfigError(f"data.source.captions must be one of {CAPTIONS}, got {captions!r}")
        self.captions = captions
        self.num_stories = {s: int(num_stories[s]) for s in SPLITS}
        self.story_length = story_length
        self.image_size = image_size
        self.seed = seed
        self.max_objects = max_objects
        self.radius = tuple(radius)
        self.speed = tuple(speed)
        self.p_appear, self.p_leave, self.p_recolour = p_appear, p_leave, p_recolour
        grid = np.arange(image_size, dtype=np.float32)
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")

    def cache_key(self) -> dict:
        """Every setting that changes the generated frames or captions."""
        key = {
            "source": "synthetic",
            "version": 3,  # 2: the oracle frames and captions are cached too; 3: and each frame's regions
            "num_stories": self.num_stories,
            "story_length": self.story_length,
            "image_size": self.image_size,
            "seed": self.seed,
            "max_objects": self.max_objects,
            "radius": list(self.radius),
            "speed": list(self.speed),
            "events": [self.p_appear, self.p_leave, self.p_recolour],
        }
        if self.captions != "list":  # the list world's key, and so its cache entries, stay as they were
            key["captions"] = f"{self.captions}-{PROSE_VERSION}"
        return key

    def load(self) -> dict[str, StorySplit]:
        """Generate all splits with their oracles (deterministic in `seed`)."""
        splits = {}
        for split_index, split in enumerate(SPLITS):
            stories = [
                self.story(split_index, i)
                for i in tqdm(range(self.num_stories[split]), desc=f"generating {split} stories", leave=False)
            ]
            data = StorySplit.from_stories([story[:3] for story in stories], self.image_size)
            surprises = [(int(begin) + t, oracle) for begin, story in zip(data.offsets, stories)
                         for t, oracle in story[3].items()]
            data.regions = np.concatenate([self.regions(split_index, i) for i in range(self.num_stories[split])]
                                          or [np.zeros((0, REGION_GRID, REGION_GRID), np.uint8)])
            data.oracle = Oracle(
                index=np.array([i for i, _ in surprises], np.int64),
                frames=np.stack([frame for _, (frame, _) in surprises]) if surprises
                else np.zeros((0, *data.frames.shape[1:]), np.uint8),
                captions=[caption for _, (_, caption) in surprises],
            )
            splits[split] = data
        return splits

    def story(self, split_index: int, index: int) -> tuple[str, np.ndarray, list[str], Surprises]:
        """One story: (story_id, frames (T, 3, H, W) uint8, T captions, oracles), where oracles maps each
        frame t that a random event changed to the frame and caption it would have had without it."""
        frames, captions, oracles = [], [], {}
        for step in self._simulate(split_index, index):
            if step.events:
                oracles[step.t] = (self._render(step.background, step.expected),
                                   self._caption(step.style, step.t, step.expected, step.walls, []))
            frames.append(self._render(step.background, step.objects))
            captions.append(self._caption(step.style, step.t, step.objects, step.walls, step.events))
        return f"synthetic-{SPLITS[split_index]}-{index:06d}", np.stack(frames), captions, oracles

    def facts(self, split_index: int, index: int) -> tuple[ProseStyle | None, list[dict[int, Thing]], list[dict[int, Thing]]]:
        """What a story's captions state of its objects, for scoring generated captions fact by fact
        (`benchmarks/prose_facts.py`): its prose style (None for list captions) and, per frame, object
        ident -> `Thing` (3x3 cell, direction, the walls it bounced off on its way into the frame), as the
        caption shows them (after the frame's random events) and as the dynamics alone give them (before)."""
        style, shown, expected = None, [], []
        for step in self._simulate(split_index, index):
            style = step.style
            shown.append({obj.ident: self._thing(obj, step.walls.get(obj.ident, ())) for obj in step.objects})
            expected.append({obj.ident: self._thing(obj, step.walls.get(obj.ident, ())) for obj in step.expected})
        return style, shown, expected

    def regions(self, split_index: int, index: int) -> np.ndarray:
        """(T, REGION_GRID, REGION_GRID) uint8: at each cell of each frame, the 3x3 region (row * 3 + column,
        as the caption names it) of the object drawn at the cell's centre, NO_OBJECT where none is. A label a
        model can be asked to read off its latent map's cells (`model.loss_weights.region`): where each
        object is, in the caption's terms."""
        size = self.image_size / REGION_GRID
        centres = (np.arange(REGION_GRID) + 0.5) * size - 0.5  # pixel coordinates of the cells' centres
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        maps = []
        for step in self._simulate(split_index, index):
            labels = np.full((REGION_GRID, REGION_GRID), NO_OBJECT, np.uint8)
            for obj in step.objects:  # in drawing order: the last one drawn over a cell names it
                thing = self._thing(obj)
                labels[_covers(obj, xx - obj.x, yy - obj.y)] = thing.row * 3 + thing.col
            maps.append(labels)
        return np.stack(maps)

    def _simulate(self, split_index: int, index: int) -> Iterator[_Step]:
        """A story's frames one by one, as states (the objects of a step are only valid until the next)."""
        rng = np.random.default_rng([self.seed, split_index, index])
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        objects = [self._new_object(rng, inside=True) for _ in range(rng.integers(1, self.max_objects + 1))]
        for ident, obj in enumerate(objects):
            obj.ident = ident
        # prose draws from a stream of its own, so the stories' frames are those of the list world
        style = (ProseStyle(np.random.default_rng([self.seed, split_index, index, 1]), BACKGROUNDS.index(background))
                 if self.captions == "prose" else None)
        born = len(objects)
        walls: dict[int, tuple[str, ...]] = {}  # object -> the walls it bounced off on its way into this frame
        for t in range(self.story_length):
            events, expected = [], objects
            if t > 0:
                walls = {obj.ident: self._move(obj) for obj in objects}
                expected = [dataclasses.replace(obj) for obj in objects]  # the state before this step's events
                events = self._events(rng, objects, born)
                born += sum(event.kind == "appears" for event in events)
            yield _Step(t, background, style, objects, walls, events, expected)

    def _new_object(self, rng: np.random.Generator, inside: bool) -> _Object:
        size = self.image_size
        r = int(rng.integers(self.radius[0], self.radius[1] + 1))
        # numpy floats, as rng.choice gave them: a moved object's position is then a numpy float64 and its
        # mask is computed in float64 against the float32 pixel grid, which the frames depend on
        vx, vy = (np.float64(_pick(rng, (-1.0, 1.0))) * rng.uniform(*self.speed) for _ in range(2))
        if inside:
            x, y = rng.uniform(r, size - 1 - r, size=2)
        else:  # enter at a wall, moving inwards
            x, y = rng.uniform(r, size - 1 - r, size=2)
            if rng.random() < 0.5:
                x = float(r) if rng.random() < 0.5 else float(size - 1 - r)
                vx = abs(vx) if x < size / 2 else -abs(vx)
            else:
                y = float(r) if rng.random() < 0.5 else float(size - 1 - r)
                vy = abs(vy) if y < size / 2 else -abs(vy)
        return _Object(_pick(rng, SHAPES), _pick(rng, list(COLOURS)), float(x), float(y), vx, vy, r)

    def _move(self, obj: _Object) -> tuple[str, ...]:
        """Move one step; the walls it bounced off ('left', 'right', 'top', 'bottom')."""
        high = self.image_size - 1 - obj.r
        vx, vy = obj.vx, obj.vy
        obj.x, obj.vx = _bounce(obj.x + obj.vx, obj.vx, obj.r, high)
        obj.y, obj.vy = _bounce(obj.y + obj.vy, obj.vy, obj.r, high)
        return ((("right" if vx > 0 else "left"),) if obj.vx != vx else ()) + (
            (("bottom" if vy > 0 else "top"),) if obj.vy != vy else ())

    def _events(self, rng: np.random.Generator, objects: list[_Object], born: int) -> list[Event]:
        """This step's random events, applied to `objects`; a new object is the story's `born`-th."""
        events = []
        if len(objects) > 1 and rng.random() < self.p_leave:
            gone = objects.pop(int(rng.integers(len(objects))))
            events.append(Event("leaves", self._thing(gone)))
        if objects and rng.random() < self.p_recolour:
            obj = objects[int(rng.integers(len(objects)))]
            old = obj.colour
            obj.colour = _pick(rng, [c for c in COLOURS if c != obj.colour])
            events.append(Event("turns", self._thing(obj), old))
        if len(objects) < self.max_objects and rng.random() < self.p_appear:
            obj = self._new_object(rng, inside=False)
            obj.ident = born
            objects.append(obj)
            events.append(Event("appears", self._thing(obj)))
        return events

    def _thing(self, obj: _Object, walls: tuple[str, ...] = ()) -> Thing:
        """What a caption says of `obj`: its looks, 3x3 cell and the direction it moves next."""
        cell = self.image_size / 3
        return Thing(obj.ident, obj.colour, obj.shape, min(int(obj.y // cell), 2), min(int(obj.x // cell), 2),
                     bool(obj.vy > 0), bool(obj.vx > 0), walls)

    def _caption(self, style: ProseStyle | None, t: int, objects: list[_Object],
                 walls: dict[int, tuple[str, ...]], events: list[Event]) -> str:
        """Frame t's caption: the list of objects and events, or with a style, its paragraph."""
        if style is not None:
            return style.caption(t + 1, [self._thing(o, walls.get(o.ident, ())) for o in objects], events)
        return " ".join([self._describe(self._thing(o)) for o in objects] + [_listed(e) for e in events])

    @staticmethod
    def _describe(thing: Thing) -> str:
        vertical = "down" if thing.down else "up"
        horizontal = "right" if thing.right else "left"
        return f"{thing.colour} {thing.shape} {ROWS[thing.row]} {COLS[thing.col]} {vertical} {horizontal} ."

    def _render(self, background: tuple[int, int, int], objects: list[_Object]) -> np.ndarray:
        image = np.empty((3, self.image_size, self.image_size), np.uint8)
        image[:] = np.asarray(background, np.uint8)[:, None, None]
        for obj in objects:
            # every shape lies within r of its centre: only that box of pixels is tested and painted
            top, left = max(math.floor(obj.y - obj.r), 0), max(math.floor(obj.x - obj.r), 0)
            box = (slice(top, math.floor(obj.y + obj.r) + 1), slice(left, math.floor(obj.x + obj.r) + 1))
            mask = _covers(obj, self._xx[box] - obj.x, self._yy[box] - obj.y)
            image[(slice(None), *box)][:, mask] = np.asarray(COLOURS[obj.colour], np.uint8)[:, None]
        return image


def _covers(obj: _Object, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Which of the points at offsets (dx, dy) from `obj`'s centre its shape covers."""
    if obj.shape == "circle":
        return dx * dx + dy * dy <= obj.r * obj.r
    if obj.shape == "square":
        return (np.abs(dx) <= obj.r * 0.85) & (np.abs(dy) <= obj.r * 0.85)
    return (dy >= -obj.r) & (dy <= obj.r) & (np.abs(dx) <= (dy + obj.r) / 2)  # triangle, apex up


def _listed(event: Event) -> str:
    """An event as the list captions write it."""
    name = f"{event.thing.colour} {event.thing.shape}"
    if event.kind == "leaves":
        return f"the {name} leaves ."
    if event.kind == "turns":
        return f"the {event.old} {event.thing.shape} turns {event.thing.colour} ."
    return f"a {name} appears ."


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of `options`, drawn as `rng.choice(options)` draws it (the same stream of numbers), without
    turning the options into an array first: that conversion was most of the cost of a story."""
    return options[int(rng.integers(len(options)))]


def _bounce(pos: float, vel: float, low: float, high: float) -> tuple[float, float]:
    """Reflect a coordinate that left [low, high] back inside and flip its velocity."""
    if pos < low:
        return 2 * low - pos, -vel
    if pos > high:
        return 2 * high - pos, -vel
    return pos, vel
