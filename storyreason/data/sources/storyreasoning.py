"""`data=storyreasoning`: the StoryReasoning dataset (daniel3303/StoryReasoning), from the hub or local files.

Loaded through HF `datasets`: by hub name, or from `data.path` holding a hub snapshot (`data/*.parquet`),
parquet files named by split (`train-*.parquet`, `test-*.parquet`) or a `save_to_disk` folder. Columns
used: `story_id`, `images` (list of {bytes, path} encoded images) and `story` (grounded text, one
`<gdi imageN>` span per frame, see `storyreason.data.captions`). Val is drawn from the HF train split
by story (seeded); test is the HF test split. Images are read as raw bytes from Arrow and decoded
once into the frame cache, never through `datasets`' own PIL decoding.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError:  # the optional extra is not installed: StoryReasoning() and write_parquet() say how to get it
    pa = pc = pq = None

from storyreason.errors import ConfigError
from storyreason.data.cache import file_fingerprint
from storyreason.data.captions import frame_captions
from storyreason.data.errors import DataError, StoryProblems, existing_folder
from storyreason.data.images import check_policy
from storyreason.data.splits import split_stories
from storyreason.data.stories import RawStory, StorySplit, decode_stories

log = logging.getLogger(__name__)

HUB_NAME = "daniel3303/StoryReasoning"
REQUIRED_COLUMNS = ("story_id", "images", "story")
HF_SPLITS = ("train", "test")
LOCAL_FORMS = "a StoryReasoning snapshot (data/*.parquet), a folder of train-*/test-*.parquet or a save_to_disk folder"
COLUMNS = ("story_id", "images", "frame_count", "chain_of_thought", "story")  # the published parquet schema
EXTRA_PACKAGES = ("datasets", "pyarrow")  # pyproject's `storyreasoning` extra, outside the core install


def require_extra() -> None:
    """Raise a one-line ConfigError naming the install command when the `storyreasoning` extra is missing."""
    missing = [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]
    if missing or pa is None:
        raise ConfigError(
            f"data=storyreasoning needs {' and '.join(missing or ['pyarrow'])}, which the core install leaves out: "
            "pip install -e '.[storyreasoning]'"
        )


def image_struct() -> pa.DataType:
    """An encoded image as `datasets` stores it: its bytes and its file name."""
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def parquet_schema() -> pa.Schema:
    """The published parquet schema, with the `datasets` features it declares."""
    features = {
        "story_id": {"dtype": "string", "_type": "Value"},
        "images": {"feature": {"_type": "Image"}, "_type": "Sequence"},
        "frame_count": {"dtype": "int32", "_type": "Value"},
        "chain_of_thought": {"dtype": "string", "_type": "Value"},
        "story": {"dtype": "string", "_type": "Value"},
    }
    types = [pa.string(), pa.list_(image_struct()), pa.int32(), pa.string(), pa.string()]
    return pa.schema(list(zip(COLUMNS, types)), metadata={"huggingface": json.dumps({"info": {"features": features}})})


class StoryReasoning:
    """Story source for `data=storyreasoning`."""

    def __init__(
        self,
        path: str | None = None,
        name: str = HUB_NAME,
        revision: str | None = None,
        image_size: int = 64,
        resize: str = "center_crop",
        val_fraction: float = 0.1,
        seed: int = 0,
        skip_bad: bool = False,
        decode_workers: int | None = None,
        hf_cache_dir: str | None = None,
    ) -> None:
        self.path = Path(path).expanduser().resolve() if path else None
        self.name, self.revision = name, revision
        self.image_size = image_size
        self.resize = check_policy(resize)
        self.val_fraction = val_fraction
        self.seed = seed
        self.skip_bad = skip_bad
        self.decode_workers = decode_workers
        self.hf_cache_dir = hf_cache_dir

    @property
    def _where(self) -> str:
        """How messages name the input."""
        return f"data.path {self.path}" if self.path else f"hub dataset {self.name}"

    def cache_key(self) -> dict:
        """The input's identity (local files: paths, sizes, mtimes) and every preprocessing setting."""
        if self.path is None:
            origin = {"hub": self.name, "revision": self.revision}
        else:
            existing_folder(self.path, LOCAL_FORMS)
            files = (f for f in self.path.rglob("*") if f.is_file() and not _hidden(f.relative_to(self.path)))
            origin = file_fingerprint(self.path, files)
        return {
            "source": "storyreasoning",
            "version": 1,
            "input": origin,
            "image_size": self.image_size,
            "resize": self.resize,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "skip_bad": self.skip_bad,
        }

    def load(self) -> dict[str, StorySplit]:
        """Read the HF splits, caption every frame, split val off train by story and decode all frames once."""
        require_extra()  # here, not at construction: a run whose frames are cached needs neither package
        tables = self._open()
        train_ids = tables["train"]["story_id"].to_pylist()
        for split, table in tables.items():
            twice = [story for story, n in Counter(table["story_id"].to_pylist()).items() if n > 1]
            if twice:
                raise DataError(
                    f"storyreasoning: story_id {twice[0]!r} appears more than once in the {split} split of {self._where}"
                )
        drawn = split_stories(train_ids, {"val": self.val_fraction}, self.seed)
        split_of = {story: split for split, stories in drawn.items() for story in stories}
        problems = StoryProblems("storyreasoning", self.skip_bad)
        stories = _raw_stories(tables["train"], lambda story: split_of[story], problems)
        stories += _raw_stories(tables["test"], lambda story: "test", problems)
        log.info("storyreasoning: %d stories, %d frames to decode from %s",
                 len(stories), sum(len(s.images) for s in stories), self._where)
        return decode_stories(stories, problems, self.image_size, self.resize, self.decode_workers)

    def _open(self) -> dict[str, pa.Table]:
        """The HF train and test splits as Arrow tables (memory-mapped, images still encoded)."""
        import datasets  # slow to import; a cached run never needs it

        if self.path is not None:
            existing_folder(self.path, LOCAL_FORMS)
        try:
            if self.path is None:
                loaded = datasets.load_dataset(self.name, revision=self.revision, cache_dir=self.hf_cache_dir)
            elif (self.path / "dataset_dict.json").is_file() or (self.path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(self.path))
            else:
                _check_parquet_files(self.path)
                loaded = datasets.load_dataset(str(self.path), cache_dir=self.hf_cache_dir)
        except DataError:
            raise
        except Exception as err:  # datasets raises many types; all mean the same to the user
            raise DataError(f"storyreasoning: cannot load {self._where}: {_describe(err)}") from err
        if not isinstance(loaded, datasets.DatasetDict) or not set(HF_SPLITS) <= set(loaded):
            found = list(loaded) if isinstance(loaded, datasets.DatasetDict) else "a single split"
            raise DataError(f"storyreasoning: {self._where} has {found}, expected splits {list(HF_SPLITS)}")
        tables = {}
        for split in HF_SPLITS:
            table = loaded[split].with_format("arrow")[:]
            missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
            if missing:
                raise DataError(
                    f"storyreasoning: the {split} split of {self._where} lacks column(s) {missing} "
                    f"(has {table.column_names}); expected {list(COLUMNS)}"
                )
            if not _is_image_list(table.schema.field("images").type):
                raise DataError(
                    f"storyreasoning: column 'images' of the {split} split of {self._where} is "
                    f"{table.schema.field('images').type}, expected a list of {image_struct()}"
                )
            if table.num_rows == 0:
                raise DataError(f"storyreasoning: the {split} split of {self._where} is empty")
            tables[split] = table
        return tables


class _StoryImages(Sequence):
    """The encoded images of one story row, read from Arrow only when decoded."""

    def __init__(self, images: pa.StructArray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> bytes:
        return self.images.field("bytes")[index].as_py()


def _raw_stories(table: pa.Table, split_of: Callable[[str], str], problems: StoryProblems) -> list[RawStory]:
    """One RawStory per row whose <gdi> spans match its images; the others are skipped and counted."""
    stories = []
    lengths = pc.list_value_length(table["images"]).to_pylist()
    for row, (story_id, text, count) in enumerate(
        zip(table["story_id"].to_pylist(), table["story"].to_pylist(), lengths)
    ):
        split = split_of(story_id)
        if not count:
            problems.skip(split, story_id, "no images")
            continue
        try:
            captions = frame_captions(text or "")
        except DataError as err:
            problems.skip(split, story_id, str(err))
            continue
        if len(captions) != count:
            problems.skip(split, story_id, f"{len(captions)} <gdi> spans for {count} images")
            continue
        images = table["images"][row].values
        if images.field("bytes").null_count:
            problems.bad(split, story_id, "an image has no encoded bytes")
            continue
        paths = images.field("path").to_pylist() if images.type.get_field_index("path") >= 0 else [None] * count
        names = [f"image {k + 1}" + (f" ({p})" if p else "") for k, p in enumerate(paths)]
        stories.append(RawStory(story_id, split, _StoryImages(images), captions, names))
    return stories


def write_parquet(rows: list[dict], path: str | Path) -> None:
    """Write stories in the published StoryReasoning parquet schema (for tests, benchmarks and converted data).

    Each row: story_id, images (list of {"bytes", "path"}), frame_count, chain_of_thought, story.
    """
    require_extra()
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), path)


def _is_image_list(kind: pa.DataType) -> bool:
    return (
        (pa.types.is_list(kind) or pa.types.is_large_list(kind))
        and pa.types.is_struct(kind.value_type)
        and kind.value_type.get_field_index("bytes") >= 0
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _check_parquet_files(folder: Path) -> None:
    """Name the parquet file that lacks a required column or holds no stories (`datasets` would not say)."""
    for file in sorted(folder.rglob("*.parquet")):
        if _hidden(file.relative_to(folder)):
            continue
        try:
            metadata = pq.read_metadata(file)
        except (OSError, pa.ArrowException) as err:
            raise DataError(f"storyreasoning: {file} is not a readable parquet file: {_describe(err)}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in metadata.schema.to_arrow_schema().names]
        if missing:
            raise DataError(f"storyreasoning: {file} lacks column(s) {missing}; expected {list(COLUMNS)}")
        if metadata.num_rows == 0:
            raise DataError(f"storyreasoning: {file} holds no stories (empty dataset)")


def _describe(err: BaseException) -> str:
    """`Type: first line` of an error and of its root cause, if that says more."""
    parts = [err]
    while (cause := parts[-1].__cause__ or parts[-1].__context__) is not None and len(parts) < 10:
        parts.append(cause)
    lines = [f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}" for e in dict.fromkeys((parts[0], parts[-1]))]
    return "; caused by ".join(lines)
