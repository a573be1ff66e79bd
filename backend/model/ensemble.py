"""Batched evaluation of a typed MLP ensemble over (query, anchor) edges.

Every edge (a query point paired with one of its anchors) is evaluated by the MLP of the anchor's *type*.
Instead of looping over types, edges are sorted by type and packed into fixed-size, type-homogeneous
blocks; every layer is then a single `baddbmm` of (n_blocks, block, in) with the per-block gathered
weights (n_blocks, in, out).  Padding rows are computed but never read back (they get zero gradient).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class EdgeLayout:
    """Packing of E edges into `n_blocks` blocks of `block` rows, each block holding one type.

    slot: (E,) long, padded row (in [0, n_blocks*block)) of every edge.
    block_type: (n_blocks,) long, MLP type of every block.
    """

    slot: torch.Tensor
    block_type: torch.Tensor
    n_blocks: int
    block: int

    @property
    def rows(self) -> int:
        return self.n_blocks * self.block

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """(E, C) -> (n_blocks, block, C), zero padded (differentiable)."""
        out = values.new_zeros(self.rows, values.shape[-1])
        out = out.index_copy(0, self.slot, values)
        return out.view(self.n_blocks, self.block, -1)

    def pack_index(self, idx: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """(E,) long -> (n_blocks*block,) long, padding rows get `fill`."""
        out = idx.new_full((self.rows,), fill)
        out[self.slot] = idx
        return out

    def unpack(self, padded: torch.Tensor) -> torch.Tensor:
        """(n_blocks, block, C) -> (E, C)."""
        return padded.reshape(self.rows, -1).index_select(0, self.slot)


def choose_block(n_edges: int, n_types: int) -> int:
    """Rows per block: large enough to amortise the weight gather, small enough to limit padding waste."""
    per_type = max(1, n_edges // max(1, n_types))
    b = 1 << max(3, math.ceil(math.log2(per_type)))  # 8 .. : power of two >= mean edges per type
    return int(min(b, 256))


def make_layout(edge_type: torch.Tensor, n_types: int, block: Optional[int] = None) -> EdgeLayout:
    """Sort edges by type and assign padded rows. Fully vectorised; one host sync for the block count."""
    E = edge_type.numel()
    if block is None:
        block = choose_block(E, n_types)
    edge_type = edge_type.reshape(-1)
    counts = torch.bincount(edge_type, minlength=n_types)
    nblk = (counts + block - 1) // block
    blk_start = torch.cumsum(nblk, 0) - nblk
    type_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(edge_type, stable=True)
    t_sorted = edge_type[order]
    rank = torch.arange(E, device=edge_type.device) - type_start[t_sorted]
    slot = torch.empty_like(edge_type)
    slot[order] = blk_start[t_sorted] * block + rank
    n_blocks = int(nblk.sum())
    block_type = torch.repeat_interleave(torch.arange(n_types, device=edge_type.device), nblk)
    return EdgeLayout(slot=slot, block_type=block_type, n_blocks=n_blocks, block=block)


def softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    # Same thresholding as nn.Softplus (identity where beta*x > 20) for bit-level parity.
    return F.softplus(x, beta=beta, threshold=20.0)


class TypedLinearStack(nn.Module):
    """`n_types` independent MLPs with identical shapes, stored stacked as (T, out, in).

    Layer l has weight `weights[l]` (T, out_l, in_l) and bias `biases[l]` (T, out_l); the layout of the
    official per-type `nn.Linear` weights (out, in) is kept so official state dicts copy over directly.
    """

    def __init__(self, n_types: int, dims: List[int]):
        super().__init__()
        self.n_types = n_types
        self.dims = list(dims)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for din, dout in zip(dims[:-1], dims[1:]):
            w = torch.empty(n_types, dout, din)
            b = torch.empty(n_types, dout)
            # Default nn.Linear init, per type.
            bound = 1.0 / math.sqrt(din)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    @property
    def n_linear(self) -> int:
        return len(self.weights)

    def layer(self, l: int, h: torch.Tensor, block_type: torch.Tensor, dtype=None) -> torch.Tensor:
        """Apply linear layer l to packed rows h: (n_blocks, block, in) -> (n_blocks, block, out)."""
        w = self.weights[l]
        b = self.biases[l]
        if dtype is not None and w.dtype != dtype:
            w = w.to(dtype)
            b = b.to(dtype)
        wb = w.index_select(0, block_type).transpose(1, 2)  # (nb, in, out)
        bb = b.index_select(0, block_type).unsqueeze(1)  # (nb, 1, out)
        return torch.baddbmm(bb, h, wb)


def knn_anchors(x: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, N, k) of the k nearest anchors of x (B, N, 3), ascending distance (no gradient)."""
    with torch.no_grad():
        # Exact (non-mm) distances: the mm trick loses ~1e-7 relative precision, enough to swap near ties.
        d = torch.cdist(x, anchors, compute_mode="donot_use_mm_for_euclid_dist")
        return torch.topk(d, k, dim=-1, largest=False, sorted=True).indices


def blend_weights(dist: torch.Tensor, sigma_neighbor: int, blend_std: float, global_dist: float) -> torch.Tensor:
    """Gaussian blend weights of reference §1.4.

    dist: (B, N, K) distances to the K nearest anchors, ascending.  Returns (B, N, K+1): the last column is
    the virtual/global anchor at the constant distance `global_dist`.
    """
    s = min(sigma_neighbor, dist.shape[-1]) - 1
    sigma = dist[..., s : s + 1] / blend_std
    d_all = torch.cat([dist, torch.full_like(dist[..., :1], global_dist)], dim=-1)
    wt = torch.exp(-(d_all * d_all) / (2.0 * sigma * sigma))
    return wt / (wt.sum(dim=-1, keepdim=True) + 1e-8)


def prune_mask(w: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep mask (same shape as w) dropping the smallest weights whose cumulative sum is <= mass.

    The blend mass dropped per point is therefore <= `mass`, and the SDF/colour error per point is bounded by
    (dropped mass) * max over dropped edges of |f_edge|  (no renormalisation, so the bound is exact).
    """
    with torch.no_grad():
        ws, order = torch.sort(w, dim=-1)
        drop_sorted = torch.cumsum(ws, dim=-1) <= mass
        keep = torch.ones_like(w, dtype=torch.bool)
        keep.scatter_(-1, order, ~drop_sorted)
        return keep
