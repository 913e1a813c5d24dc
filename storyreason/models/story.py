"""The multimodal story model: context frames + captions -> next latent + next caption.

Data flows top to bottom:
  context latents (B, K, Z), context captions (B, K, L)
  -> CaptionEncoder           per caption: token states (B*K, L, T), summary (B*K, T)
  -> CrossModalFusion         per frame: image attends to its caption, concat + FC -> (B, K, D)
  -> story GRU                over the K frames -> story state (B, S)
  -> latent head              next latent (B, Z), chosen by model/story/latent_head:
       LatentHead               residual_cnn: last latent + CNN residual over the latent maps
       MLPLatentHead            mlp (the seed's): story state -> FC -> latent
  -> caption decoder          next caption, chosen by model/story/caption_memory:
       CaptionDecoder           attention: GRU + linear head, reads the state and attends over the last
                                caption and the cells of the last and predicted latent maps
       PointerCaptionDecoder    pointer: the same, and it can copy a word of the last caption
                                (pointer-generator: a gate mixes the head's softmax with a copy attention);
                                with context_bias its head also favours the words of every context caption
       PlainCaptionDecoder      none (the seed's): GRU + linear head over the state alone

The two choices are Hydra partials (conf/model/story/*/): StoryModel calls them with its sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from storyreason.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from storyreason.models.losses import hard_token_mean, linear_cross_entropy
from storyreason.models.text import CaptionEncoder


class CrossModalFusion(nn.Module):
    """An image vector attends over its caption's token states; [image, caption, attended] -> FC."""

    def __init__(self, latent_dim: int, text_dim: int, dim: int, heads: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(latent_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(inplace=True))

    def forward(self, latent: torch.Tensor, states: torch.Tensor, summary: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """latent (N, Z), states (N, L, T), summary (N, T), pad (N, L) bool -> (N, D)."""
        image = self.image_proj(latent)  # (N, D)
        keys = self.text_proj(states)  # (N, L, D)
        attended, _ = self.attention(image[:, None], keys, keys, key_padding_mask=pad, need_weights=False)
        return self.fc(torch.cat([image, self.text_proj(summary), attended[:, 0]], dim=-1))


class LatentHead(nn.Module):
    """Next latent = last latent + a residual from a small CNN over the last two latent maps.

    The autoencoder's latent is a (C, g, g) map, so motion is a local shift: convolutions over the
    last two maps see position and velocity, and the broadcast story state adds what the captions
    and earlier frames tell.
    """

    def __init__(self, latent_shape: tuple[int, int, int], state_dim: int, hidden: int) -> None:
        super().__init__()
        self.shape = tuple(latent_shape)
        channels = self.shape[0]
        self.state_proj = nn.Linear(state_dim, hidden)
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels + hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """latents (B, K, Z), state (B, S) -> next latent (B, Z)."""
        return self.step(latents, state)[0]

    def step(self, latents: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s next latent (B, Z) and the CNN's last hidden map (B, hidden, h, w), which says at each
        cell what moves there and how: a caption decoder can read it (`StoryModel(motion_cells=True)`)."""
        b, k, _ = latents.shape
        last = latents[:, -1].view(b, *self.shape)
        previous = latents[:, -2].view(b, *self.shape) if k > 1 else last
        s = self.state_proj(state)[:, :, None, None].expand(-1, -1, *self.shape[1:])
        motion = self.net[:-1](torch.cat([last, previous, s], dim=1))
        return latents[:, -1] + self.net[-1](motion).flatten(1), motion


class MLPLatentHead(nn.Module):
    """Next latent = an MLP of the story state alone (the seed's head): no latent maps, no residual."""

    def __init__(self, latent_shape: tuple[int, int, int], state_dim: int, hidden: int) -> None:
        super().__init__()
        latent_dim = latent_shape[0] * latent_shape[1] * latent_shape[2]
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, latent_dim))

    def forward(self, latents: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """latents (B, K, Z) (unused), state (B, S) -> next latent (B, Z)."""
        return self.net(state)


class MemoryAttention(nn.Module):
    """Multi-head attention whose keys and values are projected once per caption, not at every step.

    `project` turns the memory into keys and values (B, M, 2H) when the context is encoded; greedy
    and beam decoding then pay only for the query of each new token.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def project(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (B, M, H) -> keys and values side by side (B, M, 2H)."""
        return self.key_value(memory)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, T, H / heads)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, H) queries, keys and values (B', M, H) each (the two halves of `project`'s), pad (B', M)
        True = ignore -> (B, T, H).

        B = g * B': rows g*i .. g*i + g - 1 of x read memory i (a beam's hypotheses share their story's),
        as g queries more of one call instead of g copies of the memory.
        """
        b, t, _ = x.shape
        x = x.reshape(len(keys), -1, x.shape[-1])  # (B', g*T, H)
        read = F.scaled_dot_product_attention(
            self._split(self.query(x)), self._split(keys), self._split(values), attn_mask=~pad[:, None, None, :]
        )
        return self.out(read.transpose(1, 2).flatten(2)).view(b, t, -1)


class CaptionDecoder(nn.Module):
    """GRU language model conditioned on the story state, with attention over the last caption (a copy path)."""

    def __init__(
        self,
        embed: nn.Embedding,
        state_dim: int,
        memory_dim: int,
        hidden_dim: int,
        heads: int,
        max_len: int,
        latent_shape: tuple[int, int, int],
        num_maps: int = 2,
        hops: int = 1,
        motion_channels: int = 0,
    ) -> None:
        """`hops` reads of the memory per step, each after the first queried with the step's output plus what
        the reads before it returned: the first finds, in the last caption, what the sentence being written
        says of its object (a name, a region, a colour); the next can look for that object in the map cells.
        With `motion_channels` every map cell also carries the latent head's hidden map at that cell
        (`memory`'s `motion`)."""
        super().__init__()
        if hops < 1:
            raise ValueError(f"a caption decoder reads its memory at least once, got hops={hops}")
        self.max_len = max_len  # positions: the longest caption it decodes
        channels, height, width = latent_shape
        self.cell_proj = nn.Linear(channels, hidden_dim)
        self.cell_position = nn.Parameter(0.02 * torch.randn(num_maps, height * width, hidden_dim))
        self.motion_proj = nn.Linear(motion_channels, hidden_dim) if motion_channels else None
        self.embed = embed  # shared with the caption encoder
        embed_dim = embed.embedding_dim
        self.position = nn.Embedding(max_len, embed_dim)
        self.init_hidden = nn.Linear(state_dim, hidden_dim)
        self.gru = nn.GRU(embed_dim + state_dim, hidden_dim, batch_first=True)
        self.memory_proj = nn.Linear(memory_dim + embed_dim, hidden_dim)
        self.attention = MemoryAttention(hidden_dim, heads)
        self.hops = nn.ModuleList(MemoryAttention(hidden_dim, heads) for _ in range(hops - 1))
        self.head = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, embed.num_embeddings))

    def cells(self, maps: torch.Tensor, motion: torch.Tensor | None = None) -> torch.Tensor:
        """The cells of latent maps as the decoder reads them: maps (B, M, C, h, w), the last context latent
        and the predicted next one, whose cells say where objects are and will be; with `motion_channels`,
        motion (B, C', h, w), the latent head's hidden map, added to every map's cells -> (B, M, h*w, H)."""
        cells = self.cell_proj(maps.flatten(3).transpose(2, 3)) + self.cell_position  # (B, M, h*w, H)
        if self.motion_proj is not None:
            if motion is None:
                raise ValueError("a caption decoder with motion_channels needs the latent head's hidden map (motion)")
            cells = cells + self.motion_proj(motion.flatten(2).transpose(1, 2))[:, None]
        return cells

    def memory(
        self, states: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys the decoder attends over: the last caption's words and the cells of latent maps.

        states (B, L, T), tokens (B, L) and pad (B, L) of the last context caption; cells (B, M, h*w, H)
        of the maps (`cells`) -> memory (B, L + M*h*w, 2H * hops), each read's keys and values, projected
        once for every decoding step, its padding mask (B, L + M*h*w), True at caption padding, and the word
        id at each position (B, L + M*h*w), <pad> where there is no word (padding, map cells): what a
        copying decoder can copy
        """
        words = self.memory_proj(torch.cat([states, self.embed(tokens)], dim=-1))
        keys = torch.cat([words, cells.flatten(1, 2)], dim=1)
        memory = torch.cat([attention.project(keys) for attention in (self.attention, *self.hops)], dim=-1)
        no_word = memory.shape[1] - pad.shape[1]
        ids = torch.cat([tokens.masked_fill(pad, PAD_ID), tokens.new_full((len(tokens), no_word), PAD_ID)], dim=1)
        return memory, torch.cat([pad, pad.new_zeros(len(pad), no_word)], dim=1), ids

    def forward(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        memory_ids: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, T) starting at position `start` -> logits (B, T, V), GRU hidden (1, B, H).

        state (B, S); memory (B', M, 2H) and memory_pad (B', M) with B = g * B': g consecutive rows share
        a memory row (`MemoryAttention`). Position t sees only inputs[:, :t + 1] (the GRU is causal; the
        memory is the context caption). `memory_ids` and `context_ids` are for the copying decoder.
        """
        features, hidden = self.features(inputs, state, memory, memory_pad, hidden, start)
        return self.projection(features), hidden

    @property
    def projection(self) -> nn.Linear:
        """The last layer of the head: features (.., H) -> logits (.., V)."""
        return self.head[-1]

    def features(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` up to the vocabulary projection: (B, T, H) features, GRU hidden (1, B, H)."""
        out, read, hidden = self.read(inputs, state, self.split(memory), memory_pad, hidden, start)
        return self.head[:-1](torch.cat([out, read], dim=-1)), hidden

    def split(self, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """memory (B', M, 2H * hops) -> each read's keys and values, (B', M, H) each, in one split: its backward
        writes the memory's gradient once, where a slice per read zero-filled the whole (B', M, 2H * hops)
        gradient for each read and summed them (about 1% of the prose world's training step)."""
        return memory.split(self.gru.hidden_size, dim=-1)

    def read(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        keys_values: tuple[torch.Tensor, ...],
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The GRU's outputs (B, T, H), what they read from the memory (`split`), GRU hidden (1, B, H)."""
        steps = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        x = self.embed(inputs) + self.position(steps)[None]
        x = torch.cat([x, state[:, None].expand(-1, inputs.shape[1], -1)], dim=-1)
        if hidden is None:
            hidden = torch.tanh(self.init_hidden(state))[None]
        out, hidden = self.gru(x, hidden)  # (B, T, H)
        read = self.attention(out, *keys_values[:2], memory_pad)
        for i, attention in enumerate(self.hops, start=1):
            read = read + attention(out + read, *keys_values[2 * i:2 * i + 2], memory_pad)
        return out, read, hidden


class PointerCaptionDecoder(CaptionDecoder):
    """CaptionDecoder that can also copy a word of the last caption (a pointer-generator).

    Its next-word distribution mixes two: the head's softmax over the vocabulary, and a copy head's
    attention over the last caption's words, each weight added to that word's id. A learned gate per
    step sets the mix. A story's own words (names, places) recur within the story only, so the plain
    head must learn each one separately before it can write it; the copy head needs only learn where
    to read. It returns log-probabilities, which argmax, log-softmax and cross-entropy read as logits.

    With `context_bias` the head's logits of the context captions' words get learned bonuses per step, one
    for the words of the last caption and one for those only earlier captions hold: a story's words for
    walls, rows or a bounce that the last caption lacks were often written earlier in the story, and the
    head then chooses among the story's words instead of every story's.
    """

    def __init__(self, *args: Any, context_bias: bool = False, **kwargs: Any) -> None:
        """CaptionDecoder's arguments; adds the copy head's query, the gate and, with `context_bias`, the
        bonus of the context's words."""
        super().__init__(*args, **kwargs)
        hidden_dim = self.gru.hidden_size
        self.copy_query = nn.Linear(hidden_dim, hidden_dim)
        self.gate = nn.Linear(2 * hidden_dim, 1)
        self.context_gain = nn.Linear(2 * hidden_dim, 2) if context_bias else None  # last caption, earlier ones

    def forward(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        memory_ids: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As CaptionDecoder.forward, with memory_ids (B', M) from `memory` and, with `context_bias`, every
        context caption's word ids context_ids (B', N) -> log-probabilities (B, T, V)."""
        both, weights, gate, ids, seen, hidden = self.parts(inputs, state, memory, memory_pad, hidden, start,
                                                            memory_ids, context_ids)
        return self.mix(self.logits(both, seen), weights, gate, ids), hidden

    def parts(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        memory_ids: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None,
               torch.Tensor]:
        """What the mix is made of, per step: the head's input (B, T, 2H), the copy weights over the memory
        (B, T, M), the gate (B, T, 1), each row's memory word ids (B, T, M), with `context_bias` the story's
        words so far and the kind of each (`context_words`, each (B, T, J); else None), and the GRU hidden;
        `token_log_probs` and `target_log_probs` pick the rows they need before any (.., V) tensor is made."""
        if memory_ids is None:
            raise ValueError("a copying caption decoder needs the memory's word ids (memory_ids)")
        if self.context_gain is not None and context_ids is None:
            raise ValueError("a caption decoder with context_bias needs the context captions' word ids (context_ids)")
        keys_values = self.split(memory)
        out, read, hidden = self.read(inputs, state, keys_values, memory_pad, hidden, start)
        both = torch.cat([out, read], dim=-1)  # (B, T, 2H)
        (b, t), group = inputs.shape, len(inputs) // len(memory)
        # the copy head: one query per step against the memory's keys, over the positions that hold a word
        query = self.copy_query(out).reshape(len(memory), -1, out.shape[-1])  # (B', g*T, H)
        keys = keys_values[0]  # (B', M, H) the first read's keys
        no_word = memory_ids == PAD_ID  # (B', M)
        scores = (query @ keys.transpose(1, 2)) * out.shape[-1] ** -0.5  # (B', g*T, M)
        weights = scores.float().masked_fill(no_word[:, None], float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        gate = torch.sigmoid(self.gate(both).float())  # (B, T, 1) the share written from the vocabulary
        gate = torch.where(no_word.all(dim=1).repeat_interleave(group)[:, None, None], 1.0, gate)
        ids = memory_ids.repeat_interleave(group, dim=0)[:, None].expand(-1, t, -1)  # (B, T, M)
        seen = None
        if self.context_gain is not None:
            seen = tuple(x.repeat_interleave(group, dim=0)[:, None].expand(-1, t, -1)
                         for x in context_words(memory_ids, context_ids, self.embed.num_embeddings))
        return both, weights.view(b, t, -1), gate, ids, seen, hidden

    def logits(self, both: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The head's logits (.., V) from its input (.., 2H), each context word's raised by the step's bonus
        for its kind (`context_bias`; `seen`, the words and kinds (.., J) of the same rows from `parts`).
        The bonuses are added at the J words only: a (.., 2, V) product of bonuses and word masks cost about
        5% of the prose world's training step (846 words, ~140 of them a story's)."""
        logits = self.head(both)
        if seen is None:
            return logits
        words, kinds = seen
        bonus = self.context_gain(both).gather(-1, kinds).masked_fill(words == PAD_ID, 0.0)
        return logits.scatter_add(-1, words, bonus.to(logits.dtype))

    @staticmethod
    def mix(logits: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The head's logits (.., V), copy weights (.., M), gate (.., 1) and memory ids (.., M) of the same
        rows -> the mixed log-probabilities (.., V)."""
        vocab = logits.float().softmax(dim=-1)
        return log_mix(gate, vocab, vocab.new_zeros(vocab.shape).scatter_add_(-1, ids, weights))

    def target_log_probs(self, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor,
                         memory: torch.Tensor, memory_pad: torch.Tensor, memory_ids: torch.Tensor,
                         context_ids: torch.Tensor | None = None) -> torch.Tensor:
        """log p(target) (N,) at targets' N tokens (padding skipped), as `forward` then a gather gives, without
        any (.., V) tensor but the head's logits at those tokens: training needs no other column."""
        both, weights, gate, ids, seen, _ = self.parts(inputs, state, memory, memory_pad, memory_ids=memory_ids,
                                                       context_ids=context_ids)
        tokens = targets != PAD_ID
        words = targets[tokens]
        logits = self.logits(both[tokens], None if seen is None else (seen[0][tokens], seen[1][tokens])).float()
        vocab = (logits.gather(1, words[:, None])[:, 0] - logits.logsumexp(dim=-1)).exp()
        copy = (weights[tokens] * (ids[tokens] == words[:, None])).sum(dim=-1)
        return log_mix(gate[tokens][:, 0], vocab, copy)

    def token_log_probs(self, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor,
                        memory: torch.Tensor, memory_pad: torch.Tensor, memory_ids: torch.Tensor,
                        context_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`forward`'s log-probabilities (N, V) at targets' N tokens only (padding skipped)."""
        both, weights, gate, ids, seen, _ = self.parts(inputs, state, memory, memory_pad, memory_ids=memory_ids,
                                                       context_ids=context_ids)
        tokens = targets != PAD_ID
        logits = self.logits(both[tokens], None if seen is None else (seen[0][tokens], seen[1][tokens]))
        return self.mix(logits, weights[tokens], gate[tokens], ids[tokens])


class PlainCaptionDecoder(nn.Module):
    """GRU language model conditioned on the story state alone, + a linear head (the seed's decoder):
    no memory to attend over, no position embedding. Takes CaptionDecoder's arguments and calls."""

    def __init__(
        self,
        embed: nn.Embedding,
        state_dim: int,
        memory_dim: int,
        hidden_dim: int,
        heads: int,
        max_len: int,
        latent_shape: tuple[int, int, int],
        hops: int = 1,
    ) -> None:
        """`hops` is CaptionDecoder's, and only 1 (one read of no memory) is meaningful here."""
        super().__init__()
        if hops != 1:
            raise ValueError(f"the plain caption decoder has no memory to read {hops} times: hops must be 1")
        self.max_len = max_len
        self.embed = embed  # shared with the caption encoder
        self.init_hidden = nn.Linear(state_dim, hidden_dim)
        self.gru = nn.GRU(embed.embedding_dim + state_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, embed.num_embeddings)

    def cells(self, maps: torch.Tensor, motion: torch.Tensor | None = None) -> None:
        """No map cells: this decoder reads no memory."""
        return None

    def memory(
        self, states: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor, cells: None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """No memory: (B, 0, 0), its (B, 0) mask and ids, so decoding code treats every decoder alike."""
        return states.new_zeros(len(states), 0, 0), pad[:, :0], tokens[:, :0]

    def forward(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        memory_ids: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, T) -> logits (B, T, V), GRU hidden (1, B, H); `memory*`, `context_ids` and `start` unused."""
        features, hidden = self.features(inputs, state, memory, memory_pad, hidden, start)
        return self.head(features), hidden

    @property
    def projection(self) -> nn.Linear:
        """The head: features (.., H) -> logits (.., V)."""
        return self.head

    def features(
        self,
        inputs: torch.Tensor,
        state: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` up to the head: the GRU's (B, T, H) outputs, its hidden (1, B, H)."""
        x = torch.cat([self.embed(inputs), state[:, None].expand(-1, inputs.shape[1], -1)], dim=-1)
        if hidden is None:
            hidden = torch.tanh(self.init_hidden(state))[None]
        return self.gru(x, hidden)


@dataclass
class StoryEncoding:
    """What the decoders need from the context."""

    state: torch.Tensor  # (B, S) story state
    latent: torch.Tensor  # (B, Z) predicted next latent
    memory: torch.Tensor  # (B, L + M*h*w, 2H * hops) projected keys and values: last context caption, then latent-map cells
    memory_pad: torch.Tensor  # (B, L + M*h*w) True at caption padding (both (B, 0, ...) without caption memory)
    memory_ids: torch.Tensor  # (B, L + M*h*w) the word id at each memory position, <pad> where none
    context_ids: torch.Tensor  # (B, K*L) every context caption's word ids (<pad> included): the story's words so far
    region_logits: torch.Tensor | None = None  # (B, M, h*w, classes) each map cell's region label, with a region head


class StoryModel(nn.Module):
    """Next-scene predictor over K context frames (as autoencoder latents) and their captions."""

    def __init__(
        self,
        vocab_size: int,
        latent_shape: tuple[int, int, int] = (6, 8, 8),
        max_caption_len: int = 32,
        embed_dim: int = 64,
        text_dim: int = 128,
        fusion_dim: int = 128,
        state_dim: int = 128,
        decoder_dim: int = 128,
        heads: int = 4,
        latent_hidden: int = 64,
        latent_head: Callable[..., nn.Module] = LatentHead,
        caption_memory: Callable[..., nn.Module] = CaptionDecoder,
        bidirectional: bool = False,
        motion_cells: bool = False,
        region_classes: int = 0,
    ) -> None:
        """`latent_head(latent_shape, state_dim, latent_hidden)` and `caption_memory(embed, state_dim,
        text_dim, decoder_dim, heads, positions, latent_shape)` build the two swappable blocks; a
        `bidirectional` caption encoder reads each caption both ways (`CaptionEncoder`); with `motion_cells`
        the decoder's map cells carry the latent head's hidden map (`LatentHead.step`: where things move),
        passed as `caption_memory(..., motion_channels=latent_hidden)`. With `region_classes` a small head
        reads a label off every map cell the decoder reads (where each object is, in the captions' terms;
        trained by the module's `region` loss) and each cell carries the head's distribution (`region_code`),
        so the decoder's read of an object's cells returns its region outright."""
        super().__init__()
        self.max_caption_len = max_caption_len
        latent_dim = latent_shape[0] * latent_shape[1] * latent_shape[2]
        self.text = CaptionEncoder(vocab_size, embed_dim, text_dim, bidirectional)
        self.fusion = CrossModalFusion(latent_dim, text_dim, fusion_dim, heads)
        self.story = nn.GRU(fusion_dim, state_dim, batch_first=True)
        self.latent_head = latent_head(latent_shape, state_dim, latent_hidden)
        self.latent_shape = tuple(latent_shape)
        if motion_cells and not hasattr(self.latent_head, "step"):
            raise ValueError(f"motion_cells needs a latent head with a hidden map, not {type(self.latent_head).__name__}")
        motion = {"motion_channels": latent_hidden} if motion_cells else {}
        self.caption = caption_memory(self.text.embed, state_dim, text_dim, decoder_dim, heads, max_caption_len + 1,
                                      self.latent_shape, **motion)
        self.motion_cells = motion_cells
        self.region_head, self.region_code = None, None
        if region_classes:
            self.region_head = nn.Sequential(nn.Linear(decoder_dim, decoder_dim), nn.Tanh(),
                                             nn.Linear(decoder_dim, region_classes))
            self.region_code = nn.Linear(region_classes, decoder_dim, bias=False)

    def encode(
        self, latents: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, frame_ids: torch.Tensor | None = None
    ) -> StoryEncoding:
        """latents (B, K, Z), captions (B, K, L), lengths (B, K) -> StoryEncoding.

        frame_ids (B, K), optional, name the context frames: a frame that several windows of the
        batch share (windows of one story overlap) has its caption encoded and fused once, and its
        result is reused, with the same values and gradients as encoding every copy.
        """
        b, k, _ = captions.shape
        ids = frame_ids.flatten() if frame_ids is not None else torch.arange(b * k, device=captions.device)
        first, inverse = first_occurrences(ids)
        captions_once = captions.flatten(0, 1)[first]  # (F, L), F <= B*K distinct frames
        pad = captions_once == PAD_ID
        states, summary = self.text(captions_once, lengths.flatten()[first])
        fused = self.fusion(latents.flatten(0, 1)[first], states, summary, pad)[inverse]  # (B*K, D)
        _, hidden = self.story(fused.view(b, k, -1))
        state = hidden[-1]  # (B, S)
        if self.motion_cells:
            latent, motion = self.latent_head.step(latents, state)
        else:
            latent, motion = self.latent_head(latents, state), None
        maps = torch.stack([latents[:, -1], latent], dim=1).view(b, 2, *self.latent_shape)
        last = inverse.view(b, k)[:, -1]  # each window's last context frame among the distinct ones
        cells, regions = self.caption.cells(maps, motion), None
        if self.region_head is not None:
            regions = self.region_head(cells)  # (B, M, h*w, classes)
            cells = cells + self.region_code(regions.softmax(-1))
        memory, memory_pad, memory_ids = self.caption.memory(states[last], captions[:, -1], pad[last], cells)
        return StoryEncoding(state, latent, memory, memory_pad, memory_ids, captions.flatten(1), regions)

    def caption_logits(self, enc: StoryEncoding, target: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: target `w1 .. wn <eos>` (B, L) -> logits (B, L, V) from inputs `<bos> w1 .. wn`."""
        logits, _ = self.caption(teacher_inputs(target), enc.state, enc.memory, enc.memory_pad,
                                 memory_ids=enc.memory_ids, context_ids=enc.context_ids)
        return logits

    def token_logits(self, enc: StoryEncoding, target: torch.Tensor) -> torch.Tensor:
        """`caption_logits` at target's tokens only (padding skipped): (N, V) for the N = (target != <pad>).sum()
        tokens, in row order, the rows `target[target != PAD_ID]` names."""
        if isinstance(self.caption, PointerCaptionDecoder):  # log-probabilities: a mix of two distributions
            return self.caption.token_log_probs(teacher_inputs(target), target, enc.state, enc.memory,
                                                enc.memory_pad, enc.memory_ids, enc.context_ids)
        features, _ = self.caption.features(teacher_inputs(target), enc.state, enc.memory, enc.memory_pad)
        return self.caption.projection(features[target != PAD_ID])

    def caption_loss(self, enc: StoryEncoding, target: torch.Tensor, focal_gamma: float = 0.0) -> torch.Tensor:
        """Teacher forcing: the mean cross-entropy over target's tokens (B, L) (padding ignored), as
        `caption_logits` + `F.cross_entropy(..., ignore_index=PAD_ID)` gives, without the (B, L, V) logits:
        the vocabulary projection runs on the tokens only, fused with the loss (`linear_cross_entropy`).
        A copying decoder's loss is its log-probability of each target token (`target_log_probs`), with the
        head's logits at the tokens only. With `focal_gamma` > 0 the mean weights the tokens the model
        finds hard (`hard_token_mean`)."""
        if isinstance(self.caption, PointerCaptionDecoder):
            nll = -self.caption.target_log_probs(teacher_inputs(target), target, enc.state, enc.memory,
                                                 enc.memory_pad, enc.memory_ids, enc.context_ids)
            return hard_token_mean(nll, focal_gamma)
        features, _ = self.caption.features(teacher_inputs(target), enc.state, enc.memory, enc.memory_pad)
        tokens = target != PAD_ID  # (B, L)
        projection = self.caption.projection
        if focal_gamma:  # per-token losses: the fused mean cannot weight its tokens
            return hard_token_mean(F.cross_entropy(projection(features[tokens]).float(), target[tokens],
                                                   reduction="none"), focal_gamma)
        return linear_cross_entropy(features[tokens], projection.weight, projection.bias, target[tokens])

    @torch.no_grad()
    def generate(self, enc: StoryEncoding, max_len: int | None = None) -> torch.Tensor:
        """Greedy decoding -> (B, max_len) ids, <pad> after the first <eos>."""
        max_len = max_len or self.max_caption_len
        token = torch.full((len(enc.state), 1), BOS_ID, dtype=torch.long, device=enc.state.device)
        hidden, out = None, []
        finished = torch.zeros(len(token), dtype=torch.bool, device=token.device)
        for t in range(max_len):
            logits, hidden = self.caption(token, enc.state, enc.memory, enc.memory_pad, hidden, start=t,
                                          memory_ids=enc.memory_ids, context_ids=enc.context_ids)
            token = argmax_last(logits[:, -1])[:, None]
            out.append(token)
            finished |= token[:, 0] == EOS_ID
            if finished.all():  # every caption is complete: the rest would be padding
                break
        tokens = torch.cat(out, dim=1)
        tokens = torch.nn.functional.pad(tokens, (0, max_len - tokens.shape[1]), value=PAD_ID)
        return mask_after_eos(tokens)


def log_mix(gate: torch.Tensor, vocab: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
    """log(gate * vocab + (1 - gate) * copy): a copying decoder's log-probability from its two
    distributions' probabilities, floored at 1e-30 where both are 0."""
    return (gate * vocab + (1 - gate) * copy).clamp_min(1e-30).log()


def context_words(last: torch.Tensor, context: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's distinct words (<pad> left out) of the last caption's ids `last` (B, M) and every context
    caption's `context` (B, N) -> words (B, J) and their kinds (B, J): 0 where the last caption holds the
    word, 1 where only earlier captions do; J is the most any row has, the rest <pad> (kind 1)."""
    held = last.new_zeros(len(last), vocab_size).scatter_(1, context, 1).scatter_(1, last, 2)
    held[:, PAD_ID] = 0
    count = int((held > 0).sum(dim=1).max())
    words = held.argsort(dim=1, descending=True, stable=True)[:, :count]  # kind 0's, then kind 1's, then none
    kept = held.gather(1, words)
    return words.masked_fill(kept == 0, PAD_ID), (kept != 2).long()


def teacher_inputs(target: torch.Tensor) -> torch.Tensor:
    """target `w1 .. wn <eos>` (B, L) -> the decoder's inputs `<bos> w1 .. wn` (B, L)."""
    return torch.cat([torch.full_like(target[:, :1], BOS_ID), target[:, :-1]], dim=1)


def argmax_last(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(-1)`, the first maximum on ties. On a CPU it goes through numpy, whose argmax is ~10x
    faster than torch's over a vocabulary-wide last dimension (every greedy decoding step pays it)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return x.argmax(-1)
    return torch.from_numpy(x.detach().numpy().argmax(-1))


def first_occurrences(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (N,) -> first (F,), the position of each distinct id's first occurrence, and inverse (N,),
    where ids[first[inverse]] == ids."""
    distinct, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = positions.new_full((len(distinct),), len(ids)).scatter_reduce_(0, inverse, positions, "amin")
    return first, inverse


def mask_after_eos(tokens: torch.Tensor) -> torch.Tensor:
    """Replace everything after the first <eos> of each row by <pad>."""
    seen = (tokens == EOS_ID).long().cumsum(dim=1)
    after = (seen - (tokens == EOS_ID).long()) > 0
    return tokens.masked_fill(after, PAD_ID)
