"""Exact operations on binary masks shared by target assignment and post-processing."""

import torch

from .layers import is_exporting

__all__ = ["count_pixels"]


def count_pixels(masks: torch.Tensor, dim: int) -> torch.Tensor:
    """Long[...] exact number of set pixels of Bool ``masks`` along ``dim``.

    ``masks.sum(dtype=torch.int64)`` first copies the masks to int64 (~15x slower on CPU).
    Along the last dim of a contiguous tensor, eight 0/1 bytes are summed at once as one int64
    word; adding at most 127 words keeps every byte lane below 128 (no carry, no overflow), so
    the lanes are exact partial counts. Otherwise slices of at most 255 pixels are summed in
    uint8 (no overflow), then in int64. While exporting (``is_exporting``), reinterpreting bytes
    has no graph form: a float32 sum, exact while ``dim`` has fewer than 2^24 pixels.
    """
    if is_exporting():
        return masks.to(torch.float32).sum(dim=dim).to(torch.int64)
    data = masks.view(torch.uint8)
    dim = dim % data.dim()
    if (
        dim == data.dim() - 1
        and data.shape[-1] % 8 == 0
        and data.numel() > 0  # an empty tensor may have a zero stride, which view() rejects
        and data.is_contiguous()
        and data.storage_offset() % 8 == 0
    ):
        words = data.view(torch.int64)
        lanes = torch.stack([chunk.sum(dim=-1) for chunk in words.split(127, dim=-1)], dim=-1)
        return lanes.view(torch.uint8).sum(dim=-1, dtype=torch.int64)
    slices = data.split(255, dim=dim)
    partial = torch.stack([piece.sum(dim=dim, dtype=torch.uint8) for piece in slices])
    return partial.sum(dim=0, dtype=torch.int64)
