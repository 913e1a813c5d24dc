"""What generated paragraphs of the prose world (`data=prose`) get right, fact by fact, and what each fact is worth.

    python benchmarks/prose_facts.py outputs/evaluate/<run>/captions.tsv [--column generated]
    python benchmarks/prose_facts.py --worth [--stories 300]
    python benchmarks/prose_facts.py --history
    python benchmarks/prose_facts.py --head outputs/multimodal/<run> [--no-cells]
    python benchmarks/prose_facts.py --free outputs/multimodal/<run>
    python benchmarks/prose_facts.py --regions outputs/multimodal/<run>

The first form reads the captions.tsv of `python train.py stage=evaluate data=prose ckpt_path=<run>` and,
for every object that the target frame and the last context frame both show, checks the sentence that
names it: is its 3x3 region the true one (split by whether the region changed since the last frame), its
direction, and does it say a bounce exactly when the object bounced? Every column of the file is scored
(the model's and copy_last_caption's side by side).
The second writes the last paragraph again with the facts the context determines updated one kind at a
time (the step, then the regions, the directions, the bounces: the last is the world's oracle) and prints
each version's chrF against the test split's paragraphs: how much of the gap from copying to the oracle
each kind of fact closes. The third asks how much of an object's next row its four context captions
tell: a table from the rows, vertical directions and bounces those captions state to the most frequent
next row, fitted on the train split, scored on test, against copying the last row. The fourth looks
inside a stage-2 model at the words that name a region's row or column (all but the middle ones) in the
test split's target paragraphs, teacher-forced: the probability the decoder gives the true word, that of
its vocabulary head alone, the head's argmax and a copying decoder's gate (its vocabulary share), split by
whether the word is in the last context caption (so copying can write it) or not (only the head can);
`--no-cells` hides the latent-map cells from the decoder's memory, to see whether it reads them at all.
The fifth decodes a stage-2 model's test paragraphs greedily (as evaluation does) and scores their facts as
the first form does, once with the map cells and once with them hidden: which facts it takes from the frames.
The sixth asks a stage-2 model trained with the region loss (`model.loss_weights.region`) how often its
region head names the right label on the test split, on the last context map and on the predicted next
one, split into cells where an object is drawn and cells where none is.
All read the world from `conf/data/prose.yaml` as train.py composes it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from storyreason.data.datamodule import StoryDataModule  # noqa: E402
from storyreason.data.sources.prose import COL_WORDS, ROW_WORDS, ProseStyle, Thing  # noqa: E402
from storyreason.data.sources.synthetic import NO_OBJECT, SyntheticWorld  # noqa: E402
from storyreason.data.stories import SPLITS  # noqa: E402
from storyreason.data.tokenizer import normalize_text  # noqa: E402
from storyreason.metrics import CharF  # noqa: E402
from storyreason.models.story import StoryEncoding  # noqa: E402

FACTS = ("region, changed", "region, same", "direction", "bounce, happened", "bounce, none")
LEVELS = ("copy_last_caption", "+ step", "+ regions", "+ directions", "+ bounces (the oracle)")


def prose_data(overrides: Iterable[str] = ()) -> DictConfig:
    """`data=prose`'s data config, as train.py composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["data=prose", *overrides]).data


def prose_world(overrides: Iterable[str] = ()) -> SyntheticWorld:
    """`data=prose`'s source, as train.py composes it."""
    return instantiate(prose_data(overrides).source)


def _sentence(paragraph: str, name: str) -> str | None:
    """The first sentence (or clause after a ';') of `paragraph` that names `name`."""
    for sentence in paragraph.replace(";", ".").split("."):
        if name in sentence.replace(",", " ").split():
            return sentence
    return None


def _bounced(sentence: str) -> bool:
    return "bounc" in sentence or " hit " in f" {sentence} "


def score_facts(world: SyntheticWorld, rows: Iterable[tuple[str, int, str]]) -> dict[str, tuple[int, int]]:
    """rows of (story id, target frame, paragraph) -> fact -> (right, checked) over the objects the target
    frame and the one before it both show."""
    counts: Counter = Counter()
    stories: dict[str, tuple[ProseStyle, list[dict[int, Thing]]]] = {}
    for story_id, t, paragraph in rows:
        if story_id not in stories:
            split, index = story_id.rsplit("-", 2)[-2:]
            stories[story_id] = world.facts(SPLITS.index(split), int(index))[:2]
        style, facts = stories[story_id]
        for ident, thing in facts[t].items():
            if ident not in facts[t - 1]:
                continue
            before, sentence = facts[t - 1][ident], _sentence(paragraph, style._name(thing)) or ""
            region = "region, changed" if (before.row, before.col) != (thing.row, thing.col) else "region, same"
            bounce = "bounce, happened" if thing.walls else "bounce, none"
            checks = {region: normalize_text(style._region(thing)) in sentence,
                      "direction": normalize_text(style._direction(thing)) in sentence,
                      bounce: bool(sentence) and _bounced(sentence) == bool(thing.walls)}
            for fact, right in checks.items():
                counts[fact, "checked"] += 1
                counts[fact, "right"] += right
    return {fact: (counts[fact, "right"], counts[fact, "checked"]) for fact in FACTS if counts[fact, "checked"]}


def worth(world: SyntheticWorld, split: str = "test", stories: int | None = None, context: int = 4) -> dict[str, float]:
    """chrF against the split's paragraphs of the last paragraph with the facts the context determines
    updated cumulatively (LEVELS), over every window of `context` frames."""
    split_index = SPLITS.index(split)
    written: dict[str, list[str]] = {level: [] for level in LEVELS}
    references: list[str] = []
    for index in range(stories if stories is not None else world.num_stories[split]):
        style, shown, expected = world.facts(split_index, index)
        _, _, captions, _ = world.story(split_index, index)
        for t in range(context, len(captions)):
            references.append(normalize_text(captions[t]))
            written[LEVELS[0]].append(normalize_text(captions[t - 1]))
            for level in range(1, len(LEVELS)):  # the last frame's objects, moved by the dynamics alone
                things = [_updated(thing, expected[t][ident], level) for ident, thing in shown[t - 1].items()]
                written[LEVELS[level]].append(normalize_text(style.caption(t + 1, things, [])))
    scores = {}
    for level, paragraphs in written.items():
        metric = CharF()
        metric.update(paragraphs, references)
        scores[level] = float(metric.compute())
    return scores


def _updated(thing: Thing, now: Thing, level: int) -> Thing:
    """`thing` of the last frame with the next frame's facts up to `level` (1: the step only, which the
    caption writes; 2: + region; 3: + direction; 4: + the walls it bounced off, replacing the last frame's)."""
    fields = {2: ("row", "col"), 3: ("row", "col", "down", "right"), 4: ("row", "col", "down", "right", "walls")}
    return dataclasses.replace(thing, **{f: getattr(now, f) for f in fields.get(level, ())})


def row_histories(world: SyntheticWorld, split: str, stories: int | None = None, context: int = 4
                  ) -> list[tuple[tuple, int]]:
    """(what the `context` captions before a frame state of an object's row: row, moving down, bounced off
    the top or bottom, per caption; the row the frame states) for every object the window shows throughout."""
    split_index, out = SPLITS.index(split), []
    for index in range(stories if stories is not None else world.num_stories[split]):
        shown = world.facts(split_index, index)[1]
        for t in range(context, len(shown)):
            for ident, thing in shown[t].items():
                if all(ident in shown[s] for s in range(t - context, t)):
                    history = tuple((shown[s][ident].row, shown[s][ident].down,
                                     bool({"top", "bottom"} & set(shown[s][ident].walls))) for s in range(t - context, t))
                    out.append((history, thing.row))
    return out


def row_from_history(world: SyntheticWorld, context: int = 4) -> tuple[float, float]:
    """Test accuracy of the next row from the captions' row history (a table fitted on train), and of
    copying the last caption's row."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    for history, row in row_histories(world, "train", context=context):
        table[history][row] += 1
    test = row_histories(world, "test", context=context)
    fitted = sum(bool(table[h]) and table[h].most_common(1)[0][0] == row for h, row in test) / len(test)
    return fitted, sum(h[-1][0] == row for h, row in test) / len(test)


REGION_WORDS = sorted({w for words in ROW_WORDS + COL_WORDS for w in words} - {"middle", "center", "central"})
HEAD_FIGURES = ("decoder p(word)", "head p(word)", "head argmax right", "gate")


@torch.no_grad()
def head_on_region_words(module: torch.nn.Module, batches: Iterable[dict], cells: bool = True
                         ) -> dict[str, dict[str, float]]:
    """What a stage-2 module's caption decoder gives the region words (REGION_WORDS) of the batches' target
    captions, teacher-forced: per group ("in the last caption", "not in the last caption") the number of
    words and the mean of each of HEAD_FIGURES. `cells=False` masks the latent-map cells of the decoder's
    memory."""
    from storyreason.models.story import PointerCaptionDecoder, teacher_inputs

    decoder, vocab = module.story.caption, module.tokenizer.vocab
    region_ids = torch.tensor([vocab.index(w) for w in REGION_WORDS if w in vocab])
    sums: dict[str, Counter] = defaultdict(Counter)
    for batch in batches:
        context, _ = module.latents(batch, "test")
        enc = module.encode_context(batch, context)
        if not cells:
            hide_cells(enc, batch["context_captions"].shape[-1])
        target = batch["target_caption"]
        inputs = teacher_inputs(target)
        if isinstance(decoder, PointerCaptionDecoder):
            both, _, gate, _, seen, _ = decoder.parts(inputs, enc.state, enc.memory, enc.memory_pad,
                                                      memory_ids=enc.memory_ids, context_ids=enc.context_ids)
            head = decoder.logits(both, seen).softmax(dim=-1)
            gate = gate[..., 0]
        else:
            both = torch.cat(decoder.read(inputs, enc.state, decoder.split(enc.memory), enc.memory_pad)[:2], dim=-1)
            head = decoder.head(both).softmax(dim=-1)
            gate = torch.ones_like(target, dtype=torch.float)
        mixed = decoder(inputs, enc.state, enc.memory, enc.memory_pad, memory_ids=enc.memory_ids,
                        context_ids=enc.context_ids)[0]
        mixed = mixed.float().log_softmax(dim=-1).exp()
        region = torch.isin(target, region_ids)
        in_last = (target[..., None] == batch["context_captions"][:, -1, None, :]).any(dim=-1)
        figures = {"decoder p(word)": mixed.gather(-1, target[..., None])[..., 0],
                   "head p(word)": head.gather(-1, target[..., None])[..., 0],
                   "head argmax right": (head.argmax(dim=-1) == target).float(), "gate": gate}
        for group, where in (("in the last caption", region & in_last), ("not in the last caption", region & ~in_last)):
            sums[group]["words"] += int(where.sum())
            for name, values in figures.items():
                sums[group][name] += float(values[where].sum())
    return {group: {"words": c["words"], **{n: c[n] / max(c["words"], 1) for n in HEAD_FIGURES}} for group, c in sums.items()}


def hide_cells(enc: StoryEncoding, caption_len: int) -> None:
    """Mask the latent-map cells in a story encoding's memory (the last caption's `caption_len` positions come
    first, then the cells), so the decoder reads the caption alone."""
    enc.memory_pad = enc.memory_pad.clone()
    enc.memory_pad[:, caption_len:] = True


def free_running_rows(module: torch.nn.Module, data: StoryDataModule, cells: bool = True) -> list[tuple[str, int, str]]:
    """A stage-2 module's greedy paragraphs for every test window, as (story id, target frame, paragraph) rows
    for `score_facts`; `cells=False` hides the map cells from its decoder."""
    from storyreason.models.decoding import decode_captions

    ids, frames = data.story_ids("test"), data.target_frames("test").tolist()
    rows: list[tuple[str, int, str]] = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            enc = module.encode_context(batch, module.latents(batch, "test")[0])
            if not cells:
                hide_cells(enc, batch["context_captions"].shape[-1])
            first = len(rows)
            rows += [(ids[first + j], frames[first + j], text)
                     for j, text in enumerate(module.decode(decode_captions(module.story, enc)))]
    return rows


def load_run(ckpt: Path) -> tuple[torch.nn.Module, StoryDataModule]:
    """A stage-2 checkpoint (or run directory, as `ckpt_path=` takes) in eval mode and `data=prose`'s test
    windows, its latents computed."""
    from storyreason.checkpoints import module_from_checkpoint, resolve_checkpoint

    data = instantiate(prose_data(["stage=multimodal"]))  # windows of frames, not single frames
    data.prepare_data()
    data.setup("test")
    module, _ = module_from_checkpoint(resolve_checkpoint(ckpt))
    module.eval().precompute_latents("test", data.frames["test"])
    return module, data


def head_report(ckpt: Path, cells: bool = True, batches: int = 4) -> dict[str, dict[str, float]]:
    """`head_on_region_words` of a stage-2 run over the first `batches` test batches of `data=prose`."""
    from itertools import islice

    module, data = load_run(ckpt)
    return head_on_region_words(module, islice(data.test_dataloader(), batches), cells)


MAPS = ("last context map", "predicted next map")


def region_counts(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Region head logits (B, M, cells, classes) against labels (B, M, cells) -> (right, cells) for each
    map of `MAPS` split by whether an object is drawn at the cell."""
    right = logits.argmax(-1) == labels
    counts = {}
    for m, name in enumerate(MAPS):
        drawn = labels[:, m] != NO_OBJECT
        for where, mask in (("object", drawn), ("no object", ~drawn)):
            counts[f"{name}, {where}"] = (int(right[:, m][mask].sum()), int(mask.sum()))
    return counts


def region_head_report(module: torch.nn.Module, data: StoryDataModule) -> dict[str, tuple[int, int]]:
    """`region_counts` summed over a region-loss stage-2 module's test windows."""
    if module.story.region_head is None:
        raise SystemExit("--regions: this model has no region head (it was trained with model.loss_weights.region=0)")
    right, cells = Counter(), Counter()
    with torch.no_grad():
        for batch in data.test_dataloader():
            enc = module.encode_context(batch, module.latents(batch, "test")[0])
            for key, (r, n) in region_counts(enc.region_logits, batch["regions"].flatten(2)).items():
                right[key] += r
                cells[key] += n
    return {key: (right[key], cells[key]) for key in cells}


def read_captions(path: Path) -> tuple[list[str], list[tuple[str, int, dict[str, str]]]]:
    """captions.tsv -> its paragraph columns and rows of (story id, target frame, column -> paragraph)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = [c for c in reader.fieldnames or [] if c not in ("story_id", "target_frame")]
        rows = [(row["story_id"], int(row["target_frame"]), row) for row in reader]
    return columns, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("captions", nargs="?", type=Path, help="captions.tsv of stage=evaluate data=prose")
    parser.add_argument("--worth", action="store_true", help="chrF of the last paragraph with each kind of fact updated")
    parser.add_argument("--history", action="store_true", help="the next row from the context captions' rows")
    parser.add_argument("--stories", type=int, default=None, help="with --worth: the first N test stories only")
    parser.add_argument("--head", type=Path, help="a stage-2 checkpoint or run directory: its decoder on the region words")
    parser.add_argument("--no-cells", action="store_true", help="with --head: hide the latent-map cells")
    parser.add_argument("--free", type=Path, help="a stage-2 checkpoint or run directory: the facts of its greedy test "
                                                  "paragraphs, with the map cells and with them hidden")
    parser.add_argument("--regions", type=Path, help="a stage-2 checkpoint or run directory trained with the region "
                                                     "loss: its region head's test accuracy on each map")
    args = parser.parse_args(argv)
    if not (args.worth or args.history or args.head or args.free or args.regions) and args.captions is None:
        parser.error("give a captions.tsv, --worth, --history, --head, --free or --regions")
    if args.regions:
        print("| region head on | cells | right |\n|---|---:|---:|")
        for key, (right, n) in region_head_report(*load_run(args.regions)).items():
            print(f"| {key} | {n} | {right / n:.3f} |")
    if args.head:
        report = head_report(args.head, cells=not args.no_cells)
        print("| region words | words | " + " | ".join(HEAD_FIGURES) + " |\n|---|---:|" + "---:|" * len(HEAD_FIGURES))
        for group, figures in report.items():
            print(f"| {group} | {figures['words']} | " + " | ".join(f"{figures[n]:.3f}" for n in HEAD_FIGURES) + " |")
    world = prose_world()
    if args.worth:
        scores = worth(world, stories=args.stories)
        copy, oracle = scores[LEVELS[0]], scores[LEVELS[-1]]
        print("| the last paragraph | chrF | share of the copy-to-oracle gap |\n|---|---:|---:|")
        for level, value in scores.items():
            print(f"| {level} | {value:.4f} | {(value - copy) / (oracle - copy):.2f} |")
    if args.history:
        fitted, copy = row_from_history(world)
        print(f"next row from the context captions' rows, directions and bounces: {fitted:.3f} of test objects "
              f"right (a table fitted on train); copying the last row: {copy:.3f}")
    if args.free:
        module, data = load_run(args.free)
        results = {name: score_facts(world, free_running_rows(module, data, cells))
                   for name, cells in (("with the cells", True), ("cells hidden", False))}
        print_facts(results)
    if args.captions is not None:
        columns, rows = read_captions(args.captions)
        print_facts({c: score_facts(world, [(s, t, row[c]) for s, t, row in rows]) for c in columns})


def print_facts(results: dict[str, dict[str, tuple[int, int]]]) -> None:
    """`score_facts` of each column -> a markdown table, a row per fact."""
    columns = list(results)
    print("| fact | checked | " + " | ".join(columns) + " |\n|---|---:|" + "---:|" * len(columns))
    for fact in FACTS:
        checked = results[columns[0]].get(fact, (0, 0))[1]
        cells = [f"{right / n:.3f}" if n else "-" for right, n in (results[c].get(fact, (0, 0)) for c in columns)]
        print(f"| {fact} | {checked} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
