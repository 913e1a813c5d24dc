"""`stage=predict`: a user's story folder in, the next frame and caption out; bad input named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyreason.checkpoints import CheckpointError
from storyreason.data.errors import DataError
from storyreason.run import run
from tests.conftest import compose_config

CAPTIONS = ["red circle top left down right .", "red circle middle left down right .",
            "a zebra nobody trained on", "red circle middle center down right ."]


def write_story(folder: Path) -> Path:
    """Four frames of different sizes, modes and formats, named so that plain sorting would misorder them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(folder / "frame1.png")
    Image.fromarray(rng.integers(0, 255, (120, 80, 3), dtype=np.uint8)).save(folder / "frame2.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / "frame3.png")
    Image.fromarray(rng.integers(0, 255, (300, 200), dtype=np.uint8), "L").save(folder / "frame10.webp")
    (folder / "captions.txt").write_text("\n".join(CAPTIONS) + "\n\n")
    return folder


def predict(root: Path, ckpt: Path, story: Path, *overrides: str) -> Path:
    cfg = compose_config(root, "predict", [f"ckpt_path={ckpt}", f"predict.input={story}", *overrides])
    run(cfg)
    return Path(cfg.paths.output_dir)


def test_predict_writes_the_next_frame_and_caption(
    story_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = predict(tmp_path, story_run, write_story(tmp_path / "story"))
    with Image.open(out / "next_frame.png") as frame, Image.open(out / "next_frame_large.png") as large:
        assert (frame.size, frame.mode) == ((64, 64), "RGB")
        assert large.size == (256, 256)
    caption = (out / "caption.txt").read_text().strip()
    assert capsys.readouterr().out.strip().splitlines()[-1] == caption
    best = story_run / "checkpoints" / "best.ckpt"
    beam = predict(tmp_path / "beam", best, tmp_path / "story", "predict.beam_size=3")
    assert (beam / "caption.txt").is_file()


def break_frame_count(story: Path) -> None:
    (story / "frame10.webp").unlink()


def break_image(story: Path) -> None:
    (story / "frame2.jpg").write_bytes(b"not a jpeg at all")


def drop_captions(story: Path) -> None:
    (story / "captions.txt").unlink()


def short_captions(story: Path) -> None:
    (story / "captions.txt").write_text("\n".join(CAPTIONS[:3]) + "\n")


def latin1_captions(story: Path) -> None:
    (story / "captions.txt").write_bytes("caf\xe9 crème\n".encode("latin-1") * 4)


@pytest.mark.parametrize(
    "damage, message",
    [
        (latin1_captions, r"captions.txt is not UTF-8 text .*: save it as UTF-8"),
        (break_frame_count, r"has 3 frame images \(frame1.png, frame2.jpg, frame3.png\) but this checkpoint reads "
                            r"exactly 4"),
        (break_image, r"frame2.jpg is not a readable image"),
        (drop_captions, r"captions.txt is missing"),
        (short_captions, r"captions.txt has 3 lines for 4 frames"),
    ],
)
def test_bad_story_folder_names_the_culprit(story_run: Path, tmp_path: Path, damage, message: str) -> None:
    story = write_story(tmp_path / "story")
    damage(story)
    with pytest.raises(DataError, match=message) as err:
        predict(tmp_path, story_run, story)
    assert "\n" not in str(err.value)


def test_stage1_checkpoint_is_refused(ae_run: Path, tmp_path: Path) -> None:
    message = r"pretrain_ae \(stage 1, autoencoder\) checkpoint, but predict needs a stage-2"
    with pytest.raises(CheckpointError, match=message):
        predict(tmp_path, ae_run / "pretrain_ae" / "run", write_story(tmp_path / "story"))


def test_an_empty_caption_is_read_with_one_warning(story_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    story = write_story(tmp_path / "story")
    (story / "captions.txt").write_text("\n".join([CAPTIONS[0], "", CAPTIONS[1], CAPTIONS[3]]) + "\n")
    predict(tmp_path, story_run, story)
    warnings = [r.getMessage() for r in caplog.records if "empty caption" in r.getMessage()]
    assert len(warnings) == 1 and "1 empty caption(s), line(s) 2" in warnings[0] and "captions.txt" in warnings[0]


def test_sixteen_bit_frames_predict_what_their_8_bit_versions_predict(story_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    greys = [rng.integers(0, 256, (70, 90), dtype=np.uint8) for _ in range(4)]
    for name, wide in (("eight", False), ("sixteen", True)):
        story = tmp_path / name
        story.mkdir()
        for k, grey in enumerate(greys):
            image = Image.fromarray(grey.astype(np.uint16) * 257) if wide else Image.fromarray(grey)
            image.save(story / f"frame{k + 1}.png")
        (story / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    with Image.open(tmp_path / "sixteen" / "frame1.png") as image:
        assert image.mode in ("I;16", "I")
    eight = predict(tmp_path / "out8", story_run, tmp_path / "eight")
    sixteen = predict(tmp_path / "out16", story_run, tmp_path / "sixteen")
    assert (eight / "next_frame.png").read_bytes() == (sixteen / "next_frame.png").read_bytes()
    assert (eight / "caption.txt").read_text() == (sixteen / "caption.txt").read_text()
