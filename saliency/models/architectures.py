"""Network architectures of the bundled models."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CancerMLP", "DigitsCNN", "ReverseLM", "SentimentTransformer"]


class DigitsCNN(nn.Module):
    """Small CNN for the 8x8 scikit-learn digits.

    Maps normalised images of shape ``[B, 1, 8, 8]`` to logits of shape ``[B, 10]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.classifier(self.features(x))


class CancerMLP(nn.Module):
    """Multilayer perceptron for the 30 breast-cancer features.

    Maps standardised features of shape ``[B, 30]`` to logits of shape ``[B, 2]``.
    Uses tanh so that input gradients are smooth, which suits gradient explanations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(30, 32),
            nn.Tanh(),
            nn.Linear(32, 32),
            nn.Tanh(),
            nn.Linear(32, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of feature vectors."""
        return self.layers(x)


class _EncoderLayer(nn.Module):
    """One post-norm transformer encoder layer that ignores PAD keys.

    Written out instead of ``nn.TransformerEncoderLayer`` so that no fused inference fast path
    (which changes numerics and skips padded rows) runs in eval mode, and so that ``torch.func``
    transforms see plain operations.
    """

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads must divide dim; got dim={dim}, heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, dim = h.shape
        q, k, v = (
            t.reshape(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for t in self.qkv(h).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        # A finite fill keeps an all-PAD row finite (uniform weights) instead of NaN.
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        h = self.norm1(h + self.out(mixed))
        return self.norm2(h + self.feedforward(h))


class SentimentTransformer(nn.Module):
    """Token embedding, one transformer encoder layer, masked mean pool and a linear head.

    Maps token ids of shape ``[B, T]`` (int64, PAD id 0 at the end) to logits ``[B, classes]``.
    Token order is not encoded: the sentiment label is a function of the bag of words.
    ``forward(ids) == classify(embed(ids), ids)``, so attributions can be taken with respect to
    the embeddings.

    Parameters
    ----------
    vocab_size : int
        Number of token ids, PAD (id 0) included.
    classes : int
        Number of output logits.
    dim, heads, hidden : int
        Embedding width, attention heads and feed-forward width.
    """

    def __init__(
        self, vocab_size: int, classes: int = 2, dim: int = 32, heads: int = 2, hidden: int = 64
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.encoder = _EncoderLayer(dim, heads, hidden)
        self.head = nn.Linear(dim, classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the token embeddings ``[B, T, dim]`` of token ids ``[B, T]``."""
        return self.embedding(ids)

    def classify(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Return logits for embeddings ``[B, T, dim]``; `ids` ``[B, T]`` only say where PAD is."""
        keep = ids != 0
        h = self.encoder(embeddings, keep)
        weights = keep.to(h.dtype).unsqueeze(-1)
        # clamp: an all-PAD row pools to zeros (logits = head bias) rather than dividing by 0.
        pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of token ids."""
        return self.classify(self.embed(ids), ids)


class _DecoderLayer(nn.Module):
    """One pre-norm causal self-attention layer with a feed-forward block, written out plainly."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads must divide dim; got dim={dim}, heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = h.shape
        q, k, v = (
            t.reshape(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for t in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        # A finite fill keeps a padding row (nothing allowed) finite instead of NaN.
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        h = h + self.out(mixed)
        return h + self.feedforward(self.norm2(h))


class ReverseLM(nn.Module):
    """A tiny causal language model: token and position embeddings, decoder layers, a head.

    Maps token ids ``[B, T]`` to next-token logits ``[B, T, vocab_size]``. Position ``t`` sees
    positions ``<= t`` whose ``attention_mask`` is 1; ``position_ids`` default to the count of
    real tokens before each one (``attention_mask.cumsum(1) - 1``), so left, right or inner
    padding leaves the real tokens' outputs unchanged.

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    dim, heads, hidden, layers : int
        Width, attention heads, feed-forward width and number of decoder layers.
    max_positions : int
        Positions the position embedding covers.
    eos_token_id : int or None
        The end-of-sequence token, where greedy generation stops (not a weight).
    pad_token_id : int
        The padding token, which fills a finished sequence.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 48,
        heads: int = 4,
        hidden: int = 96,
        layers: int = 2,
        max_positions: int = 24,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.embedding = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_positions, dim)
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding, whose output explanations are taken at."""
        return self.embedding

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return next-token logits for every position."""
        length = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        if int(position_ids.max()) >= self.positions.num_embeddings:
            raise ValueError(
                f"input_ids: at most {self.positions.num_embeddings} positions, got "
                f"{int(position_ids.max()) + 1}"
            )
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None] & real[:, None, :]
        h = self.embedding(input_ids) + self.positions(position_ids)
        for layer in self.layers:
            h = layer(h, allowed)
        return self.head(self.norm(h))
