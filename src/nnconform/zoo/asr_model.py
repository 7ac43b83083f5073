"""The embedded ASR anchor's architecture: a small fully convolutional CTC model over log-mel frames.

No recurrence and no data-dependent control flow: ``torch.fx`` traces it, so AIMET QuantSim,
NNCodec and the split criterion's graph cuts apply as they do to the image anchors. Blocks are
named ``stem``, ``blocks.N`` and ``head`` so split points read well.
"""

from __future__ import annotations

from torch import nn


class SeparableBlock(nn.Module):
    """Depthwise-separable 1-D convolution block with a residual: depthwise k x 1, pointwise 1 x 1."""

    def __init__(self, channels: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.pointwise = nn.Conv1d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = self.bn2(self.pointwise(self.bn1(self.depthwise(x))))
        return x + self.dropout(self.relu(y))


class ConvCTC(nn.Module):
    """Log-mel ``[N, 1, n_mels, frames]`` -> CTC log-probabilities ``[N, frames // 2 + 1, vocab]``.

    A strided stem (5 frames, stride 2: 20 ms per output frame), ``depth`` separable blocks of
    ``kernel`` frames (receptive field about 1 s), a 1 x 1 head over the character vocabulary.
    """

    def __init__(self, n_mels: int = 40, channels: int = 128, depth: int = 7, kernel: int = 9,
                 vocab_size: int = 29, dropout: float = 0.1) -> None:
        super().__init__()
        self.flatten = nn.Flatten(1, 2)  # [N, 1, mels, T] -> [N, mels, T]
        self.stem = nn.Sequential(nn.Conv1d(n_mels, channels, 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm1d(channels), nn.ReLU(inplace=False))
        self.blocks = nn.Sequential(*(SeparableBlock(channels, kernel, dropout) for _ in range(depth)))
        self.head = nn.Conv1d(channels, vocab_size, 1)
        self.log_softmax = nn.LogSoftmax(dim=2)

    def forward(self, x):
        logits = self.head(self.blocks(self.stem(self.flatten(x))))  # [N, vocab, T']
        return self.log_softmax(logits.permute(0, 2, 1))
