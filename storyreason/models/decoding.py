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


def top_k_stable(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of x (N, C) and their columns, best first, ties to the lower column:
    the first k of a stable descending sort, at the cost of a top-k.

    `topk` leaves the order of equal values unspecified, so its k are put in (value, column) order, and a
    row whose tie crosses the k-th place (`topk` may have kept a higher column) is sorted whole.
    """
    values, index = x.topk(k, dim=1)
    index, order = index.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    index = index.gather(1, order)
    crowded = (x >= values[:, -1:]).sum(dim=1) > k  # more than k columns reach the k-th value
    if crowded.any():
        rows = crowded.nonzero()[:, 0]
        whole_values, whole_index = x[rows].sort(dim=1, descending=True, stable=True)
        values[rows], index[rows] = whole_values[:, :k], whole_index[:, :k]
    return values, index


def best_first(values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row of values (N, C), ties to the lower of their distinct `ids` (N, C) ->
    their values and positions (N, k), best first. For a few candidates per row: it sorts them all."""
    order = ids.argsort(dim=1)
    values, best = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values[:, :k], order.gather(1, best[:, :k])


@torch.no_grad()
def beam_search(
    model: StoryModel, enc: StoryEncoding, beam_size: int, max_len: int | None = None, length_penalty: float = 0.0
) -> torch.Tensor:
    """The best of `beam_size` hypotheses per story -> (B, max_len) ids.

    Hypotheses are ranked by their summed log-probability (float64; each token's log-probability is its
    logit less the float32 log-sum-exp of its step); a finished one (it emitted <eos>) keeps its score
    and only continues with <pad>. Ties go to the lower (beam, token) index, as `argmax` breaks them, so
    `beam_size=1` returns exactly what greedy decoding returns. With `length_penalty` a > 0 the final
    pick divides each score by its length ** a (longer captions are favoured more as a grows); the
    search itself is unchanged.

    Only each hypothesis's k best tokens can be among its story's k best continuations, so a step ranks
    k * k candidates per story (after a top-k over the vocabulary), not k * V; the k hypotheses of a
    story read its memory through one attention call (`CaptionDecoder` shares memory rows).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    max_len = check_max_len(model, max_len)
    b, k, device = len(enc.state), beam_size, enc.state.device
    state = enc.state.repeat_interleave(k, dim=0)  # (B*k, S)
    scores = torch.full((b, k), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # every story starts from one live hypothesis
    token = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=device)  # the decoder's input at step t
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)  # (B*k, t) decoded so far
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    beam_rows = torch.arange(b, device=device)[:, None] * k  # (B, 1) each story's first row
    hidden = None
    for t in range(max_len):
        logits, hidden = model.caption(token, state, enc.memory, enc.memory_pad, hidden, start=t,
                                       memory_ids=enc.memory_ids, context_ids=enc.context_ids)
        logits = logits[:, -1].float()  # (B*k, V)
        vocab = logits.shape[-1]
        n = min(k, vocab)
        best_logits, best_tokens = top_k_stable(logits, n)  # (B*k, n) each hypothesis's best tokens
        top = best_logits[:, :1]  # (B*k, 1) the row's maximum: the log-sum-exp in one pass, no max of its own
        log_sum_exp = (logits - top).exp_().sum(dim=-1, keepdim=True).log_() + top
        log_probs = best_logits.double() - log_sum_exp.double()
        if finished.any():  # <pad> at log-probability 0; the other columns can never be chosen
            lowest = torch.arange(n, device=device).expand(int(finished.sum()), n)
            best_tokens[finished] = lowest
            log_probs[finished] = torch.where(lowest == PAD_ID, 0.0, float("-inf")).double()
        candidates = (scores.reshape(-1, 1) + log_probs).view(b, k * n)
        ids = (torch.arange(k, device=device)[:, None] * vocab + best_tokens.view(b, k, n)).view(b, k * n)
        scores, pick = best_first(candidates, ids, k)  # (B, k)
        chosen = ids.gather(1, pick)  # (B, k) beam * V + token
        origin = (chosen // vocab + beam_rows).flatten()  # (B*k,) parent rows
        token = (chosen % vocab).view(-1, 1)
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
