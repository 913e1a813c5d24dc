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
