"""Decoding and resizing frames: the three policies on non-square images, bad images, the worker pool."""

from __future__ import annotations

import numpy as np
import pytest

from storyreason.data.errors import DataError
from storyreason.data.images import check_policy, decode_frame, decode_frames
from tests.data.conftest import encode_image

RED = (200, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_center_crop_keeps_the_middle_square(fmt: str) -> None:
    # 120x40: white left third (x < 40), red elsewhere; the middle square is x in [40, 80): all red
    frame = decode_frame(encode_image((120, 40), RED, fmt), 16, "center_crop")
    assert frame.shape == (3, 16, 16) and frame.dtype == np.uint8
    assert frame[0].min() > 170 and frame[1].max() < 40


def test_pad_keeps_the_whole_image_with_black_bars() -> None:
    frame = decode_frame(encode_image((120, 40), RED, "PNG"), 12, "pad")  # scaled to 12x4, rows 4..7
    assert frame[:, :4].max() == 0 and frame[:, 8:].max() == 0
    assert frame[1, 4:8, 0].min() > 200  # the white third is still there
    assert frame[0, 4:8, -1].min() > 170 and frame[1, 4:8, -1].max() < 40


def test_squash_stretches_to_the_square() -> None:
    frame = decode_frame(encode_image((120, 40), RED, "PNG"), 12, "squash")
    assert frame[1, :, :3].min() > 200 and frame[1, :, 5:].max() < 40  # a white third, no bars


def tall(fmt: str = "PNG") -> bytes:
    """40x120 (w, h): white left third (x < 13), red elsewhere; rows differ only in their colour band."""
    return encode_image((40, 120), RED, fmt)


def test_center_crop_of_a_tall_image_keeps_the_middle_rows_at_full_width() -> None:
    frame = decode_frame(tall(), 12, "center_crop")  # the middle 40x40 square, scaled to 12x12
    assert frame[1, :, :3].min() > 200 and frame[1, :, 5:].max() < 40  # the white third across every row


def test_pad_of_a_tall_image_puts_the_bars_left_and_right() -> None:
    frame = decode_frame(tall(), 12, "pad")  # scaled to 4x12, columns 4..7
    assert frame[:, :, :4].max() == 0 and frame[:, :, 8:].max() == 0
    assert frame[1, :, 4].min() > 200 and frame[0, :, 7].min() > 170 and frame[1, :, 7].max() < 40


def test_squash_of_a_tall_image_keeps_no_bars() -> None:
    frame = decode_frame(tall(), 12, "squash")
    assert frame[1, :, :3].min() > 200 and frame[0, :, 5:].min() > 170  # the whole image, stretched sideways


def test_the_three_policies_give_three_frames_of_a_wide_image() -> None:
    """(Of the tall one, whose rows are alike, the middle square and the squashed whole are the same frame.)"""
    frames = [decode_frame(encode_image((120, 40), RED, "PNG"), 12, p).tobytes() for p in ("center_crop", "pad", "squash")]
    assert len(set(frames)) == 3


def test_grey_and_transparent_images_become_rgb() -> None:
    from io import BytesIO

    from PIL import Image

    for mode in ("L", "RGBA", "P"):
        buffer = BytesIO()
        Image.new(mode, (30, 20)).save(buffer, "PNG")
        assert decode_frame(buffer.getvalue(), 8, "center_crop").shape == (3, 8, 8)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(DataError, match="data.source.resize must be one of"):
        check_policy("stretch")


def test_bad_images_are_reported_by_index() -> None:
    good = encode_image((40, 30), RED)
    frames, errors = decode_frames([good, b"not an image", good[: len(good) // 2], good], 4, 8, "center_crop", workers=1)
    assert sorted(errors) == [1, 2]
    assert "not an image file" in errors[1] and "truncated" in errors[2].lower()
    assert frames[0].any() and frames[3].any()


def test_worker_processes_give_the_same_frames_in_order() -> None:
    images = [encode_image((30 + k, 20), (10 * k, 0, 0)) for k in range(9)]
    serial, _ = decode_frames(images, 9, 8, "pad", workers=1)
    parallel, errors = decode_frames(iter(images), 9, 8, "pad", workers=2, chunk_size=2)
    assert not errors
    np.testing.assert_array_equal(serial, parallel)


def _saved(im: "Image.Image", fmt: str) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    im.save(buffer, fmt)
    return buffer.getvalue()


def _grey_ramp() -> np.ndarray:
    """A 32x32 8-bit grey ramp over every brightness from 0 to 255."""
    return (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)


def _wide(mode: str, ramp: np.ndarray) -> "Image.Image":
    """`ramp` on the 16-bit scale (x 257) in integer mode `mode`, or on 0..1 in mode F."""
    from PIL import Image

    if mode == "F":
        return Image.fromarray((ramp / 255).astype(np.float32))
    wide = ramp.astype(np.uint32) * 257
    if mode == "I":
        return Image.fromarray(wide.astype(np.int32))
    order = {"I;16": "<", "I;16L": "<", "I;16B": ">", "I;16N": "="}[mode]
    return Image.frombytes(mode, ramp.shape[::-1], wide.astype(f"{order}u2").tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I", "F"])
def test_high_bit_depth_frames_give_their_8_bit_frame(mode: str) -> None:
    from PIL import Image

    from storyreason.data.images import to_rgb

    ramp = _grey_ramp()
    image = _wide(mode, ramp)
    assert image.mode == mode
    assert (np.asarray(to_rgb(image)) == ramp[..., None]).all()
    eight_bit = decode_frame(_saved(Image.fromarray(ramp), "PNG"), 32, "squash")
    if mode in ("I;16", "I", "F", "I;16B"):  # the modes Pillow writes to a file (PNG or TIFF) and reads back
        stored = _saved(image, "PNG" if mode == "I;16" else "TIFF")
        assert (decode_frame(stored, 32, "squash") == eight_bit).all()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK"])
def test_every_8_bit_mode_becomes_the_same_rgb(mode: str) -> None:
    from PIL import Image

    ramp = Image.fromarray(_grey_ramp())
    reference = ramp.convert("1").convert("L") if mode == "1" else ramp
    image = ramp.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    frame = decode_frame(_saved(image, fmt), 32, "squash")
    assert frame.tolist() == decode_frame(_saved(reference, "PNG"), 32, "squash").tolist()


def test_sixteen_bit_png_is_not_white(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(np.full((16, 16), 128 * 257, np.uint16)).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    assert (decode_frame(path, 8, "center_crop") == 128).all()


def test_a_mode_that_cannot_become_rgb_names_the_mode() -> None:
    from PIL import Image

    from storyreason.data.images import to_rgb

    with pytest.raises(ValueError, match="image mode La cannot be converted to RGB"):
        to_rgb(Image.new("La", (4, 4)))
