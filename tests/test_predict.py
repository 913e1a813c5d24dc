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


FRAMES_IN_ORDER = ["frame1.png", "frame2.jpg", "frame3.png", "frame10.webp"]  # natural order, not sorted()


def own_prediction(ckpt: Path, story: Path, beam_size: int = 1) -> tuple[np.ndarray, str]:
    """The checkpoint's model run here on the story's frames in natural order and its captions:
    the next frame as 8-bit (H, W, 3) and the caption, decoded greedily or with a beam."""
    import torch

    from storyreason.checkpoints import module_from_checkpoint
    from storyreason.data.images import decode_frame

    module, checkpoint = module_from_checkpoint(ckpt)
    module.eval().decoding = {"beam_size": beam_size}
    frames = torch.from_numpy(np.stack([decode_frame(story / name, 64, "center_crop") for name in FRAMES_IN_ORDER]))
    tokens, lengths = module.tokenizer.encode_batch(CAPTIONS, checkpoint["hyper_parameters"]["max_caption_len"])
    with torch.no_grad():
        prediction = module({"context_frames": frames[None], "context_captions": torch.from_numpy(tokens)[None],
                             "context_lengths": torch.from_numpy(lengths)[None]})
    image = (prediction.image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return image, prediction.captions[0]


def test_frames_are_read_in_natural_name_order(tmp_path: Path) -> None:
    from storyreason.data.images import decode_frame
    from storyreason.predict import read_story

    story = write_story(tmp_path / "story")
    frames, captions = read_story(story, 4, 64)
    assert captions == CAPTIONS
    for k, name in enumerate(FRAMES_IN_ORDER):
        assert np.array_equal(frames[k].numpy(), decode_frame(story / name, 64, "center_crop")), name


def test_predict_writes_the_models_own_next_frame_and_caption(
    story_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    story = write_story(tmp_path / "story")
    out = predict(tmp_path, story_run, story)
    image, caption = own_prediction(story_run / "checkpoints" / "best.ckpt", story)
    with Image.open(out / "next_frame.png") as frame, Image.open(out / "next_frame_large.png") as large:
        assert (frame.size, frame.mode) == ((64, 64), "RGB")
        assert np.array_equal(np.asarray(frame), image)
        assert large.size == (256, 256)
        assert np.array_equal(np.asarray(large), image.repeat(4, axis=0).repeat(4, axis=1))
    assert (out / "caption.txt").read_text() == caption + "\n"
    assert capsys.readouterr().out.strip().splitlines()[-1] == caption


def test_predict_with_a_beam_writes_the_beam_decoding(
    story_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storyreason.modules import multimodal

    asked: list[dict] = []
    decode = multimodal.decode_captions

    def recorded(*args, **kwargs):
        asked.append(kwargs)
        return decode(*args, **kwargs)

    story = write_story(tmp_path / "story")
    best = story_run / "checkpoints" / "best.ckpt"
    monkeypatch.setattr(multimodal, "decode_captions", recorded)
    out = predict(tmp_path / "beam", best, story, "predict.beam_size=3")
    assert asked[0]["beam_size"] == 3
    monkeypatch.undo()
    assert (out / "caption.txt").read_text() == own_prediction(best, story, beam_size=3)[1] + "\n"


def test_a_bare_checkpoint_copied_outside_its_run_predicts_what_the_run_does(story_run: Path, tmp_path: Path) -> None:
    """best.ckpt alone, in another folder, with the autoencoder checkpoint it was trained from gone."""
    import torch

    story = write_story(tmp_path / "story")
    ckpt = torch.load(story_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["ae_ckpt"] = str(tmp_path / "gone.ckpt")
    (tmp_path / "elsewhere").mkdir()
    torch.save(ckpt, tmp_path / "elsewhere" / "alone.ckpt")
    alone = predict(tmp_path / "alone", tmp_path / "elsewhere" / "alone.ckpt", story)
    from_run = predict(tmp_path / "run", story_run, story)
    for name in ("next_frame.png", "caption.txt"):
        assert (alone / name).read_bytes() == (from_run / name).read_bytes(), name


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
