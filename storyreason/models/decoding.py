"""Caption decoding from a StoryEncoding: greedy (`StoryModel.generate`) or beam search.

Both are deterministic and stop at a maximum length; both return (B, max_len) ids with <pad>
after the first <eos>, the form the metrics and the tokenizer read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from storyreason.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from storyreason.models.story import StoryEncoding, StoryModel, mask_after_eos


def check_max_len(model: StoryModel, max_len: int | None) -> int:
    """`max_len`, or the model's caption length when None; the decoder has positions for at most L + 1 steps."""
    limit = model.caption.max_len
    max_len = max_len or model.max_caption_len
    if not 1 <= max_len <= limit:
        raise ValueError(f"a caption of at most {max_len} tokens cannot be decoded: this model has {limit} positions")
    return max_len


@torch.no_grad()
def beam_search(
    model: StoryModel, enc: StoryEncoding, beam_size: int, max_len: int | None = None, length_penalty: float = 0.0
) -> torch.Tensor:
    """The best of `beam_size` hypotheses per story -> (B, max_len) ids.

    Hypotheses are ranked by their summed log-probability (float64); a finished one (it emitted
    <eos>) keeps its score and only continues with <pad>. Ties go to the lower (beam, token) index,
    as `argmax` breaks them, so `beam_size=1` returns exactly what greedy decoding returns. With
    `length_penalty` a > 0 the final pick divides each score by its length ** a (longer captions
    are favoured more as a grows); the search itself is unchanged.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    max_len = check_max_len(model, max_len)
    b, k, device = len(enc.state), beam_size, enc.state.device
    state = enc.state.repeat_interleave(k, dim=0)  # (B*k, S)
    memory = enc.memory.repeat_interleave(k, dim=0)  # (B*k, M, 2H) projected keys and values
    memory_pad = enc.memory_pad.repeat_interleave(k, dim=0)  # (B*k, M)
    scores = torch.full((b, k), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # every story starts from one live hypothesis
    token = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=device)  # the decoder's input at step t
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)  # (B*k, t) decoded so far
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    hidden = None
    for t in range(max_len):
        logits, hidden = model.caption(token, state, memory, memory_pad, hidden, start=t)
        log_probs = logits[:, -1].double().log_softmax(dim=-1)  # (B*k, V)
        vocab = log_probs.shape[-1]
        only_pad = torch.full_like(log_probs[0], float("-inf"))
        only_pad[PAD_ID] = 0.0
        log_probs = torch.where(finished[:, None], only_pad, log_probs)
        candidates = (scores.reshape(-1, 1) + log_probs).view(b, k * vocab)
        top_scores, top = candidates.sort(dim=1, descending=True, stable=True)
        scores, top = top_scores[:, :k], top[:, :k]  # (B, k)
        origin = (top // vocab + torch.arange(b, device=device)[:, None] * k).flatten()  # (B*k,) parent rows
        token = (top % vocab).view(-1, 1)
        hidden = hidden[:, origin]
        tokens = torch.cat([tokens[origin], token], dim=1)
        finished = finished[origin] | (token[:, 0] == EOS_ID)
        if finished.all():
            break
    tokens = F.pad(tokens, (0, max_len - tokens.shape[1]), value=PAD_ID).view(b, k, max_len)
    best = torch.zeros(b, dtype=torch.long, device=device)  # beams are sorted: beam 0 has the best score
    if length_penalty > 0:
        lengths = (mask_after_eos(tokens.flatten(0, 1)) != PAD_ID).sum(dim=1).view(b, k).clamp(min=1)
        best = (scores / lengths.double() ** length_penalty).argmax(dim=1)
    return mask_after_eos(tokens[torch.arange(b, device=device), best])


def decode_captions(
    model: StoryModel, enc: StoryEncoding, beam_size: int = 1, max_len: int | None = None, length_penalty: float = 0.0
) -> torch.Tensor:
    """(B, max_len) caption ids: greedy for `beam_size=1` (its faster loop), beam search otherwise."""
    if beam_size == 1:
        return model.generate(enc, check_max_len(model, max_len))
    return beam_search(model, enc, beam_size, max_len, length_penalty)
