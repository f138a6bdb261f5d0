"""Weights between a source and the graph: dense float arrays or block-quantized matrices.

A block-quantized matrix stores, for each row and each block of `block` consecutive columns,
x = scale * (q - zero) + offset. That one form carries GGUF Q4_0 (zero 8), Q4_1 (zero 0, offset
m), Q8_0 (zero 128 after shifting to unsigned) and the seed's int8 Q(x) = round(S(x - Z))
(scale 1/S, offset Z) exactly, so nothing is dequantized and requantized on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BLOCK = 32

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BlockWeight:
    """A [rows, cols] matrix quantized in blocks along cols (rows = output features)."""

    q: npt.NDArray[np.uint8]  # [rows, cols], values in 0 .. 2**bits - 1
    scale: Floats  # [rows, cols // block]
    zero: int
    offset: Floats | None  # [rows, cols // block] or None
    bits: int
    block: int = BLOCK

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.q.shape
        return int(rows), int(cols)

    def dequantize(self) -> Floats:
        rows, cols = self.shape
        blocks = self.q.reshape(rows, cols // self.block, self.block).astype(np.float32)
        x = (blocks - np.float32(self.zero)) * self.scale[..., None]
        if self.offset is not None:
            x += self.offset[..., None]
        return x.reshape(rows, cols).astype(np.float32)


Weight = Floats | BlockWeight


def as_float(weight: Weight) -> Floats:
    if isinstance(weight, BlockWeight):
        return weight.dequantize()
    return np.asarray(weight, dtype=np.float32)


def quantize_offset(x: Floats, bits: int, block: int = BLOCK) -> BlockWeight:
    """The seed's asymmetric quantization per block: S = (2**bits - 1) / (max - min), Z = min,
    Q(x) = round(S (x - Z)); stored as scale 1/S and offset Z (zero point 0)."""
    rows, cols = x.shape
    if cols % block:
        raise ValueError(f"{cols} columns are not a multiple of the block size {block}")
    blocks = x.reshape(rows, cols // block, block).astype(np.float32)
    low = blocks.min(axis=-1)
    span = blocks.max(axis=-1) - low
    levels = np.float32(2**bits - 1)
    step = np.where(span > 0, span / levels, np.float32(1.0)).astype(np.float32)
    q = np.rint((blocks - low[..., None]) / step[..., None])
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(rows, cols)
    return BlockWeight(
        q=q, scale=step, zero=0, offset=low.astype(np.float32), bits=bits, block=block
    )
