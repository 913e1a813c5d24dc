"""Story windows: `context` frames plus the next one, sliding by `stride`, never across stories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storyreason.data.windows import FrameDataset, WindowDataset, window_index


def test_windows_by_hand() -> None:
    """Stories of 6, 2 and 7 frames, context 2, stride 2: the 2-frame story gives none."""
    offsets = np.array([0, 6, 8, 15])
    expected = [[0, 1, 2], [2, 3, 4], [8, 9, 10], [10, 11, 12], [12, 13, 14]]
    assert window_index(offsets, context=2, stride=2).tolist() == expected


@pytest.mark.parametrize("context", [1, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_windows_stay_inside_stories_and_respect_context_and_stride(context: int, stride: int) -> None:
    rng = np.random.default_rng(context * 10 + stride)
    lengths = rng.integers(1, 12, size=20)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    windows = window_index(offsets, context, stride)
    owner = np.repeat(np.arange(len(lengths)), lengths)  # story of every frame

    assert windows.shape[1] == context + 1
    assert (np.diff(windows, axis=1) == 1).all(), "a window is consecutive frames"
    assert (owner[windows] == owner[windows[:, :1]]).all(), "a window never crosses a story"
    starts = windows[:, 0] - offsets[owner[windows[:, 0]]]
    assert (starts % stride == 0).all()
    per_story = [-(-(n - context) // stride) if n > context else 0 for n in lengths]  # ceil((n - K) / stride)
    assert np.bincount(owner[windows[:, 0]], minlength=len(lengths)).tolist() == per_story


def test_stories_shorter_than_context_plus_one_give_no_windows() -> None:
    offsets = np.array([0, 4, 8])
    assert window_index(offsets, context=4, stride=1).shape == (0, 5)
    assert window_index(offsets, context=3, stride=1).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_window_dataset_gathers_a_batch_of_context_and_target() -> None:
    """Context frames (B, K, 3, H, W) and captions (B, K, L), target frame (B, 3, H, W) and caption (B, L)."""
    frames = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 4).contiguous()
    tokens = torch.arange(6).view(6, 1).expand(6, 5).contiguous()
    lengths = torch.arange(6) + 1
    dataset = WindowDataset(frames, tokens, lengths, torch.from_numpy(window_index(np.array([0, 6]), 3, 1)))
    batch = dataset.__getitems__([0, 2])
    assert batch["context_frames"].shape == (2, 3, 3, 4, 4)
    assert batch["context_frames"].dtype == torch.uint8
    assert batch["context_frames"][:, :, 0, 0, 0].tolist() == [[0, 1, 2], [2, 3, 4]]
    assert batch["context_captions"].shape == (2, 3, 5)
    assert batch["context_lengths"].tolist() == [[1, 2, 3], [3, 4, 5]]
    assert batch["target_frame"].shape == (2, 3, 4, 4)
    assert batch["target_frame"][:, 0, 0, 0].tolist() == [3, 5]
    assert batch["target_caption"][:, 0].tolist() == [3, 5]
    assert batch["target_length"].tolist() == [4, 6]
    assert {k: v.shape for k, v in dataset[1].items()} == {k: v.shape[1:] for k, v in dataset.__getitems__([1]).items()}


def test_window_captions_are_cut_to_the_longest_caption_of_the_batch() -> None:
    """Columns past every caption of the batch (context and target) are padding only, so they are dropped."""
    lengths = torch.tensor([2, 3, 1, 5, 2, 2, 4, 1])
    tokens = torch.arange(1, 9)[:, None] * (torch.arange(10)[None] < lengths[:, None])  # (8, 10), zero = pad
    dataset = WindowDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), tokens, lengths,
                            torch.from_numpy(window_index(np.array([0, 8]), 2, 1)))
    first = dataset.__getitems__([0, 1])  # frames 0..3: longest caption 5 tokens (frame 3, a target)
    assert first["target_caption"].shape == (2, 5)
    assert first["context_captions"].shape == (2, 2, 5)
    assert dataset.__getitems__([4])["context_captions"].shape == (1, 2, 4)  # frames 4..6
    assert torch.equal(first["context_captions"][1, 0], tokens[1, :5])


def test_frame_dataset_serves_single_frames() -> None:
    frames = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    dataset = FrameDataset(frames)
    assert len(dataset) == 5
    assert dataset.__getitems__([0, 3, 4])["frames"].shape == (3, 3, 4, 4)
