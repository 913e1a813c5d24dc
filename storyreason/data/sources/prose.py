"""Prose captions for the built-in world (`data=prose`): each frame's facts written as a paragraph.

A story draws one `ProseStyle` from its own random stream: its characters' names, a setting (place, time,
ground), a bystander, synonyms for colours and shapes, and which sentence form writes each kind of fact
(the step, an object with its region and direction, a bounce, an event). The style stays fixed through
the story, so the next paragraph is the last one with its facts updated: copying the last caption is
strong, the world's oracle (the true next state in the same style) is near perfect, and a model beats
copying by updating the facts that follow from the context (the step, regions, directions, bounces).
Varied phrasing and a vocabulary of hundreds of words come from the styles across stories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = """Ada Alma Amos Anya Arlo Basil Bea Bruno Cara Cleo Cyrus Dara Dina Edgar Elsa Emil Enzo Esme Ezra
Faye Felix Flora Gemma Gus Hana Hugo Ida Igor Iris Ivan Jade Jonah Juno Kai Kira Lars Lena Leon Lila Luca
Mabel Milo Mira Nell Nico Nora Odin Olga Omar Otto Pia Quinn Rafa Rhea Rosa Ruben Sami Saul Tara Theo Tilda
Ugo Uma Vera Vico Wade Wren Xena Yara Yuri Zane Zora Abel Bram Celia Dov Elio Fern Greta Hale Ines Joel Kurt
Lise Marta Nils Opal Petra Remy Sven Tova Ulla Vito Willa Agnes Boris Clara Dmitri Edith Frida Gideon Hilda
Ingrid Jasper Klara Lionel Magnus Ninon Oskar Pavel Rosalind Silas Thea Ursula Viggo Wilma Yvette Zelda
Anselm Benno Carmen Dorian Elke Florian Gisela Harald Isolde Jorge Katya Lorenzo Miriam Nestor Ottilie
Perrin Quentin Rowena Stellan Tamsin Umberto Valka Wolfgang Ximena Yusuf Zuri Alba Bodil Corin Dagny""".split()
PLACE_ADJECTIVES = """old quiet busy empty sunny misty windy narrow wide hidden silent crowded ancient broken
golden frozen dusty muddy grassy rocky sandy shady leafy lonely humble grand tiny vast forgotten peaceful
noisy chilly warm damp dry bright gloomy sleepy lively crooked tidy rustic royal secret distant friendly
abandoned sheltered overgrown painted wooden marble stony fragrant flooded sunken hollow steep gentle
shabby elegant cosy drowsy restless haunted enchanted weathered polished cluttered spacious cramped
breezy humid icy scorched moonlit starlit twilit colourful faded lush barren tranquil bustling
whispering echoing glittering shimmering smoky rainy snowy stormy velvet copper silver crystal""".split()
PLACE_NOUNS = """harbour meadow courtyard market garden square plaza station library orchard vineyard
village hillside valley riverbank lakeshore beach dune forest clearing quarry mill bakery workshop attic
cellar barn stable chapel tower castle bridge pier lighthouse island canyon glacier desert oasis prairie
marsh swamp cave grotto terrace balcony rooftop alley avenue boulevard park playground schoolyard museum
gallery theatre circus fairground stadium arena farmyard greenhouse pond fountain cloister monastery
observatory airfield dockyard warehouse factory laboratory kitchen ballroom corridor lobby cottage
manor palace fortress citadel ruin temple shrine cemetery vicarage hamlet suburb outskirts crossroads
junction tunnel canal estuary fjord lagoon reef cliff plateau moor heath steppe tundra savanna jungle
bamboo grove thicket orchard-path boathouse sawmill foundry brewery dairy granary""".split()
TIMES = ("at dawn", "at noon", "at dusk", "at midnight", "in the early morning", "late in the afternoon",
         "on a rainy evening", "on a foggy morning", "under a full moon", "on a windy day", "in deep winter",
         "in high summer", "on a spring morning", "on an autumn night", "before sunrise", "after the storm",
         "during the festival", "on a holiday", "at teatime", "around supper", "in the blue hour",
         "through a drizzle", "beneath thunderclouds", "amid falling leaves")
GROUND_TONES = (  # one list per background of the world, in its order
    ("dark slate", "charcoal", "midnight"),
    ("deep green", "mossy", "forest green"),
    ("brown", "earthen", "chestnut"),
    ("navy", "deep blue", "indigo"),
    ("grey", "ashen", "pewter"),
)
GROUNDS = """grass stone sand tiles gravel clay cobbles planks carpet ice snow soil moss pebbles asphalt
linoleum parquet marble slate straw bark peat""".split()
PROFESSIONS = """baker sailor farmer painter tailor miller weaver potter carpenter blacksmith fisherman
gardener shepherd poet clerk doctor nurse pilot drummer juggler teacher student merchant soldier guard
hunter cook butcher barber priest monk knight scribe porter courier waiter dancer singer fiddler cobbler
glassblower beekeeper astronomer sculptor mason plumber engineer lawyer banker librarian detective
mapmaker ferryman innkeeper shopkeeper vendor tinker chemist jeweller locksmith saddler cooper
tanner chandler florist grocer botanist geologist surveyor architect sailmaker rope-maker lamplighter
watchmaker bookbinder printer typist archivist historian philosopher magician acrobat clown""".split()
THINGS = """lantern umbrella kite basket violin notebook teapot compass telescope broom ladder bucket
bicycle wheelbarrow scarf satchel parcel banner flute trumpet accordion candle mirror clock hourglass
map shovel rake sickle fishing-rod net anchor rope drum bell whistle camera sketchbook paintbrush easel
chessboard pipe hat cane bouquet apple loaf pie jar bottle cup kettle spoon ribbon feather shell stone
pebble seashell acorn pinecone cushion blanket quilt chair stool bench lamp fan mask puppet
harp lute banjo tambourine guitar trowel hammer chisel saw wrench pliers thimble needle spindle
yarn envelope postcard diary almanac atlas globe magnifier spyglass lantern-pole birdcage
kettle-drum saucepan ladle colander sieve jug pitcher goblet tray platter""".split()
SPOTS = """fence gate doorway window corner steps wall hedge bench tree stump well archway porch pillar
statue lamppost railing cart shed kiosk bus-stop signpost fountain-edge haystack woodpile chimney
balustrade trellis mailbox bollard flagpole scarecrow windmill sundial""".split()
WATCH_VERBS = ("watches", "looks on", "keeps an eye on things", "waits", "stands guard", "hums a tune")
VERBS = """drifts glides slides rolls travels heads wanders floats races darts moves sails creeps hurries
zooms coasts tumbles skates scuttles bobs trundles scoots ambles rambles strolls flits""".split()
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "jade"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "plum"),
    "white": ("white", "pale", "ivory"),
}
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "round token"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "pyramid", "arrowhead"),
}
ROW_WORDS = (("top", "middle", "bottom"), ("upper", "central", "lower"), ("northern", "middle", "southern"))
COL_WORDS = (("left", "center", "right"), ("left", "central", "right"), ("western", "middle", "eastern"))
REGION_NOUNS = ("area", "part", "region", "quarter", "zone", "patch")
CENTRES = ("the very middle", "the centre", "the heart of the scene")
WALLS = (  # left, right, top, bottom
    ("the left wall", "the right wall", "the top wall", "the bottom wall"),
    ("the western edge", "the eastern edge", "the northern edge", "the southern edge"),
    ("the left side", "the right side", "the ceiling", "the floor"),
)
WALL_INDEX = {"left": 0, "right": 1, "top": 2, "bottom": 3}
CARDINALS = "one two three four five six seven eight nine ten eleven twelve".split()
ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
OPENERS = ("Then", "Meanwhile", "Just now", "Suddenly", "At that instant")


@dataclass(frozen=True)
class Thing:
    """What a caption says of one object: its story-wide identity (`ident`, the order it entered the
    story in), looks, 3x3 cell, direction and the walls it bounced off on its way into this frame."""

    ident: int
    colour: str
    shape: str
    row: int
    col: int
    down: bool
    right: bool
    walls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    """A random event of a frame: `kind` is appears, leaves or turns (then `old` is the colour it had)."""

    kind: str
    thing: Thing
    old: str = ""


def _pick(rng: np.random.Generator, options: tuple | list) -> object:
    return options[int(rng.integers(len(options)))]


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: 'an azure disc', 'a red box'."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _number(n: int, words: list[str]) -> str:
    return words[n - 1] if 1 <= n <= len(words) else str(n)


class ProseStyle:
    """One story's way of writing: drawn once per story from its own random stream, then fixed."""

    def __init__(self, rng: np.random.Generator, background: int) -> None:
        self.names = [NAMES[i] for i in rng.permutation(len(NAMES))]
        self.watcher = self.names.pop()  # never one of the moving characters
        self.colours = {c: _pick(rng, words) for c, words in COLOUR_WORDS.items()}
        self.shapes = {s: _pick(rng, words) for s, words in SHAPE_WORDS.items()}
        self.rows, self.cols = _pick(rng, ROW_WORDS), _pick(rng, COL_WORDS)
        self.region_noun, self.centre = _pick(rng, REGION_NOUNS), _pick(rng, CENTRES)
        self.walls = _pick(rng, WALLS)
        self.verb = _pick(rng, VERBS)
        self.directions = int(rng.integers(4))
        self.forms = {kind: int(rng.integers(n)) for kind, n in
                      (("setting", 3), ("thing", 4), ("bounce", 3), ("appears", 3), ("leaves", 3),
                       ("turns", 3), ("aside", 3))}
        self.opener = _pick(rng, OPENERS)
        self.place = f"the {_pick(rng, PLACE_ADJECTIVES)} {_pick(rng, PLACE_NOUNS)}"
        self.time = _pick(rng, TIMES)
        self.ground = f"{_pick(rng, GROUND_TONES[background])} {_pick(rng, GROUNDS)}"
        self.aside = self._aside(rng)

    def _aside(self, rng: np.random.Generator) -> str:
        """The bystander's sentence, the same in every frame of the story."""
        who, job = self.watcher, _pick(rng, PROFESSIONS)
        thing, spot, verb = _pick(rng, THINGS), f"the {_pick(rng, SPOTS)}", _pick(rng, WATCH_VERBS)
        return (
            f"{who}, {_a(job)}, {verb} by {spot} with {_a(thing)}.",
            f"Nearby, {_a(job)} named {who} holds {_a(thing)} and {verb} by {spot}.",
            f"{_a(thing).capitalize()} rests against {spot}, where {who} the {job} {verb}.",
        )[self.forms["aside"]]

    def caption(self, step: int, things: list[Thing], events: list[Event]) -> str:
        """The paragraph of frame `step` (1-based): the setting, one sentence per object, the frame's events
        in one sentence, the bystander: 3-6 sentences."""
        sentences = [self._setting(step), *map(self._thing, things)]
        if events:
            clauses = [self._event(e) for e in events]
            sentences.append(f"{self.opener} {', and '.join(clauses)}.")
        sentences.append(self.aside)
        return " ".join(sentences)

    def _setting(self, step: int) -> str:
        place, time, ground = self.place, self.time, self.ground
        return (
            f"At moment {_number(step, CARDINALS)}, {time}, the scene is {place}, over {ground}.",
            f"Scene {_number(step, CARDINALS)} takes place in {place} {time}, where the ground is {ground}.",
            f"{time[0].upper()}{time[1:]}, in {place}, the {_number(step, ORDINALS)} picture shows {ground} below.",
        )[self.forms["setting"]]

    def _name(self, thing: Thing) -> str:
        return self.names[thing.ident % len(self.names)]

    def _looks(self, thing: Thing, colour: str | None = None) -> str:
        return f"{self.colours[colour or thing.colour]} {self.shapes[thing.shape]}"

    def _region(self, thing: Thing) -> str:
        if thing.row == 1 and thing.col == 1:
            return self.centre
        return f"the {self.rows[thing.row]} {self.cols[thing.col]} {self.region_noun}"

    def _direction(self, thing: Thing) -> str:
        up_down, left_right = ("down" if thing.down else "up"), ("right" if thing.right else "left")
        if self.directions == 0:
            return f"{up_down} and to the {left_right}"
        if self.directions == 1:
            return f"toward the {'lower' if thing.down else 'upper'} {left_right}"
        if self.directions == 2:
            return f"{'south' if thing.down else 'north'}-{'east' if thing.right else 'west'}"
        return f"{up_down}ward and {left_right}ward"

    def _thing(self, thing: Thing) -> str:
        name, looks, region, direction = self._name(thing), self._looks(thing), self._region(thing), self._direction(thing)
        bounce = ""
        if thing.walls:
            walls = " and ".join(self.walls[WALL_INDEX[w]] for w in thing.walls)
            bounce = (f", after bouncing off {walls}", f" since it hit {walls}",
                      f", having bounced off {walls}")[self.forms["bounce"]]
        return (
            f"{name}, the {looks}, is in {region} and {self.verb} {direction}{bounce}.",
            f"In {region}, {name} the {looks} {self.verb} {direction}{bounce}.",
            f"{name} {self.verb} {direction} through {region}{bounce}; it is {_a(looks)}.",
            f"The {looks} called {name} {self.verb} {direction}{bounce}, now in {region}.",
        )[self.forms["thing"]]

    def _event(self, event: Event) -> str:
        name, thing = self._name(event.thing), event.thing
        if event.kind == "appears":
            return (f"{_a(self._looks(thing))} named {name} appears", f"{name}, a new {self._looks(thing)}, arrives",
                    f"{_a(self._looks(thing))} called {name} enters the scene")[self.forms["appears"]]
        if event.kind == "leaves":
            return (f"{name} leaves", f"{name} slips out of sight", f"{name} is gone")[self.forms["leaves"]]
        old, new = self.colours[event.old], self.colours[thing.colour]
        return (f"{name} turns {new}", f"{name} changes from {old} to {new}",
                f"{name} becomes {new}")[self.forms["turns"]]
