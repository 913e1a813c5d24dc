"""The story model: teacher forcing never sees the token it predicts; greedy decoding matches it."""

from __future__ import annotations

import functools

import pytest
import torch

from storyreason.data.tokenizer import EOS_ID, PAD_ID
from storyreason.models.story import CaptionDecoder, StoryEncoding, StoryModel, mask_after_eos, teacher_inputs

B, K, L, Z, V = 3, 4, 10, 64, 20  # Z = 1 x 8 x 8

OPTIONS = {
    "one read": {},
    "three reads, captions read both ways, motion cells": {
        "bidirectional": True, "motion_cells": True, "caption_memory": functools.partial(CaptionDecoder, hops=3)},
}


@pytest.fixture(params=list(OPTIONS))
def model(request: pytest.FixtureRequest) -> StoryModel:
    """A tiny seeded story model in eval mode: the default, and with a bidirectional caption encoder, a
    decoder that reads its memory three times per step (each read queried with the ones before) and the
    latent head's hidden map in the map cells."""
    torch.manual_seed(0)
    return StoryModel(V, latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32,
                      state_dim=32, decoder_dim=32, heads=2, latent_hidden=8, **OPTIONS[request.param]).eval()


def context(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, K, Z), captions (B, K, L) of words then <eos> then <pad>, lengths (B, K)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, L + 1, (B, K), generator=g)
    captions = torch.randint(4, V, (B, K, L), generator=g)
    position = torch.arange(L)
    captions[position == (lengths - 1)[..., None]] = EOS_ID
    captions[position >= lengths[..., None]] = PAD_ID
    return torch.randn(B, K, Z, generator=g), captions, lengths


def target(seed: int = 2) -> torch.Tensor:
    """(B, L) target captions `w1 .. wn <eos>` padded."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, V, (B, L), generator=g)
    tokens[:, 7] = EOS_ID
    tokens[:, 8:] = PAD_ID
    return tokens


@torch.no_grad()
def encode(model: StoryModel) -> StoryEncoding:
    """The encoding of the default context."""
    return model.encode(*context())


@pytest.mark.parametrize("t", [0, 3, 7])
@torch.no_grad()
def test_changing_target_token_t_leaves_positions_up_to_t_unchanged(model: StoryModel, t: int) -> None:
    """Position t predicts token t from tokens < t: no later token leaks into it."""
    enc, caption = encode(model), target()
    logits = model.caption_logits(enc, caption)
    changed = caption.clone()
    changed[:, t] = (caption[:, t] - 4 + 1) % (V - 4) + 4  # another word at position t, in every row
    logits_changed = model.caption_logits(enc, changed)
    assert logits.shape == (B, L, V)
    torch.testing.assert_close(logits_changed[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6)
    assert (logits_changed[:, t + 1 :] - logits[:, t + 1 :]).abs().max() > 1e-3


@torch.no_grad()
def test_teacher_forcing_input_is_the_shifted_target(model: StoryModel) -> None:
    """Position 0 sees only <bos>: its logits do not depend on the target at all."""
    enc = encode(model)
    first = model.caption_logits(enc, target(2))[:, 0]
    other = model.caption_logits(enc, target(3))[:, 0]
    torch.testing.assert_close(first, other, rtol=0, atol=1e-6)


@torch.no_grad()
def test_greedy_decoding_is_the_argmax_of_teacher_forcing_on_its_own_output(model: StoryModel) -> None:
    """Step-by-step generation (carried GRU state, positions) equals the full-sequence forward pass."""
    enc = encode(model)
    generated = model.generate(enc)
    assert generated.shape == (B, L)
    forced = model.caption_logits(enc, generated).argmax(-1)
    for row, forced_row in zip(generated.tolist(), forced.tolist()):
        n = row.index(EOS_ID) + 1 if EOS_ID in row else L
        assert forced_row[:n] == row[:n]


@torch.no_grad()
def test_context_changes_the_prediction(model: StoryModel) -> None:
    """The encoding depends on the context latents and captions (the model reads its input)."""
    a, b = model.encode(*context(1)), model.encode(*context(5))
    assert a.latent.shape == (B, Z)
    assert (a.latent - b.latent).abs().max() > 1e-4
    assert (a.state - b.state).abs().max() > 1e-4


def test_mask_after_eos() -> None:
    tokens = torch.tensor([[5, EOS_ID, 6, EOS_ID], [5, 6, 7, 8], [EOS_ID, 5, 6, 7]])
    expected = [[5, EOS_ID, PAD_ID, PAD_ID], [5, 6, 7, 8], [EOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert mask_after_eos(tokens).tolist() == expected


@torch.no_grad()
def test_extra_padding_columns_change_nothing(model: StoryModel) -> None:
    """Batches are cut to their longest caption: the same captions with more padding give the same outputs."""
    latents, captions, lengths = context()
    lengths = lengths.clamp(max=6)
    captions[torch.arange(L) >= lengths[..., None]] = PAD_ID
    captions[torch.arange(L) == (lengths - 1)[..., None]] = EOS_ID
    caption = target()[:, :8]
    narrow_enc = model.encode(latents, captions[..., :6], lengths)
    wide_enc = model.encode(latents, captions, lengths)  # 4 more columns of padding
    torch.testing.assert_close(wide_enc.latent, narrow_enc.latent, rtol=0, atol=1e-5)
    wide_logits = model.caption_logits(wide_enc, torch.nn.functional.pad(caption, (0, L - 8), value=PAD_ID))
    torch.testing.assert_close(wide_logits[:, :8], model.caption_logits(narrow_enc, caption), rtol=0, atol=1e-5)


def test_frames_shared_by_windows_are_encoded_once_with_the_same_result_and_gradients() -> None:
    """Three overlapping windows of one story (frames 0-3, 1-4, 2-5) and one of another: naming the
    frames encodes their 10 distinct captions instead of 16, and changes no output and no gradient."""
    torch.manual_seed(0)
    model = StoryModel(V, latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32,
                       state_dim=32, decoder_dim=32, heads=2, latent_hidden=8)
    g = torch.Generator().manual_seed(3)
    frame_latents, frame_captions = torch.randn(10, Z, generator=g), torch.randint(4, V, (10, L), generator=g)
    frame_lengths = torch.randint(3, L + 1, (10,), generator=g)
    position = torch.arange(L)
    frame_captions[position == (frame_lengths - 1)[:, None]] = EOS_ID
    frame_captions[position >= frame_lengths[:, None]] = PAD_ID
    ids = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [6, 7, 8, 9]])
    inputs = (frame_latents[ids], frame_captions[ids], frame_lengths[ids])
    texts = []
    model.text.register_forward_hook(lambda module, args, out: texts.append(len(args[0])))

    def run(frame_ids: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model.zero_grad()
        enc = model.encode(*inputs, frame_ids=frame_ids)
        logits = model.caption_logits(enc, frame_captions[ids[:, -1]])
        outputs = [enc.state, enc.latent, enc.memory, enc.memory_pad, logits]
        (logits.square().mean() + enc.latent.square().mean()).backward()
        return outputs, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    every_copy, grads = run(None)
    once, grads_once = run(ids)
    assert texts == [16, 10]
    for a, b in zip(every_copy + grads, once + grads_once, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_second_read_adds_to_the_first_what_it_reads_queried_with_it() -> None:
    """With hops=2 the first read is the one-read decoder's, and the second adds a read queried with the
    step's output plus the first: silenced (its output projection zero) the decoder is the one-read one."""
    torch.manual_seed(0)
    one = StoryModel(V, latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32,
                     state_dim=32, decoder_dim=32, heads=2, latent_hidden=8).eval()
    two = StoryModel(V, latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32,
                     state_dim=32, decoder_dim=32, heads=2, latent_hidden=8,
                     caption_memory=functools.partial(CaptionDecoder, hops=2)).eval()
    two.load_state_dict(one.state_dict(), strict=False)  # all but the second read's weights
    enc_one, enc_two = one.encode(*context()), two.encode(*context())
    assert enc_two.memory.shape[-1] == 2 * enc_one.memory.shape[-1]
    assert not torch.allclose(one.caption_logits(enc_one, target()), two.caption_logits(enc_two, target()))
    width = enc_one.memory.shape[-1]  # the second read's keys and values follow the first's
    keys, values = enc_two.memory[..., :width].chunk(2, dim=-1)
    keys2, values2 = enc_two.memory[..., width:].chunk(2, dim=-1)
    out, read, _ = two.caption.read(teacher_inputs(target()), enc_two.state, two.caption.split(enc_two.memory),
                                    enc_two.memory_pad)
    first = two.caption.attention(out, keys, values, enc_two.memory_pad)
    torch.testing.assert_close(first, one.caption.read(teacher_inputs(target()), enc_one.state,
                                                       one.caption.split(enc_one.memory), enc_one.memory_pad)[1])
    torch.testing.assert_close(read, first + two.caption.hops[0](out + first, keys2, values2, enc_two.memory_pad))
    two.caption.hops[0].out.weight.zero_()
    two.caption.hops[0].out.bias.zero_()
    torch.testing.assert_close(one.caption_logits(enc_one, target()), two.caption_logits(enc_two, target()))


@torch.no_grad()
def test_motion_cells_add_the_latent_heads_hidden_map_to_every_map_cell() -> None:
    """With motion_cells each cell of both maps in the decoder's memory gets the projection of the latent
    head's hidden map at that cell (its last hidden layer, which `LatentHead.step` returns beside the next
    latent `forward` gives); the caption's words are read as without."""
    torch.manual_seed(0)
    sizes = dict(latent_shape=(1, 8, 8), max_caption_len=L, embed_dim=16, text_dim=16, fusion_dim=32, state_dim=32,
                 decoder_dim=32, heads=2, latent_hidden=8)
    model = StoryModel(V, motion_cells=True, **sizes).eval()
    plain = StoryModel(V, **sizes).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # all but the motion projection
    latents, captions, lengths = context()
    enc, without = model.encode(latents, captions, lengths), plain.encode(latents, captions, lengths)
    latent, motion = model.latent_head.step(latents, enc.state)
    assert motion.shape == (B, 8, 8, 8)
    torch.testing.assert_close(latent, model.latent_head(latents, enc.state))
    torch.testing.assert_close(latent, enc.latent)
    added = model.caption.motion_proj(motion.flatten(2).transpose(1, 2)) @ model.caption.attention.key_value.weight.T
    difference = enc.memory - without.memory  # the memory is linear in the keys: only the added part is left
    torch.testing.assert_close(difference[:, :L], torch.zeros_like(difference[:, :L]))
    torch.testing.assert_close(difference[:, L:L + 64], added)
    torch.testing.assert_close(difference[:, L + 64:], added)
