"""Batched evaluation of a typed MLP ensemble over (query, anchor) edges.

Every edge (a query point paired with one of its anchors) is evaluated by the MLP of the anchor's *type*.
Instead of looping over types, edges are sorted by type into padded, type-homogeneous row groups; every layer
is then one segmented matmul (`torch._grouped_mm`) or, for dtypes it lacks (float64), one `baddbmm` over
fixed-size blocks with per-block gathered weights (`EdgeLayout`).
"""
from __future__ import annotations

import math
import threading
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _pad_to(n: int, m: int = 8) -> int:
    return (n + m - 1) // m * m


class _GMM(torch.autograd.Function):
    """Segmented matmul y[g] = x[g] @ wt[g] over row groups (rows sorted by group, `offs` = group ends).

    Wraps `torch._grouped_mm` (one kernel, no weight copies) with a backward written in terms of the same
    functions, so it is differentiable to any order (needed for gradient losses: create_graph=True).
    """

    @staticmethod
    def forward(ctx, x, wt, offs):  # x (E, K), wt (T, K, N) -> (E, N)
        ctx.save_for_backward(x, wt)
        ctx.offs = offs
        return torch._grouped_mm(x, _column_major(wt), offs=offs)

    @staticmethod
    def backward(ctx, g):
        x, wt = ctx.saved_tensors
        g = g.contiguous()
        gx = _GMM.apply(g, _column_major(wt.transpose(1, 2)), ctx.offs) if ctx.needs_input_grad[0] else None
        gw = _GMMK.apply(x, g, ctx.offs) if ctx.needs_input_grad[1] else None
        return gx, gw, None


def _column_major(b: torch.Tensor) -> torch.Tensor:
    """(T, K, N) right-hand sides stored column-major per group (a transposed view of a contiguous (T, N, K)).

    The CPU grouped matmul runs 1.5x faster with that layout (2-core host, K = N = 200: 205 vs 130 GFLOP/s): the
    forward's transposed weights already have it; the backward's (T, out, in) weights are copied once per call
    (a few MB, against a matmul over every edge)."""
    if b.stride(1) == 1:
        return b
    return b.transpose(1, 2).contiguous().transpose(1, 2)


class _GMMK(torch.autograd.Function):
    """Per-group outer products G[g] = x[g]^T y[g]: (E, K), (E, N) -> (T, K, N) (weight gradients)."""

    @staticmethod
    def forward(ctx, x, y, offs):
        ctx.save_for_backward(x, y)
        ctx.offs = offs
        return torch._grouped_mm(x.t(), y, offs=offs)

    @staticmethod
    def backward(ctx, G):
        x, y = ctx.saved_tensors
        G = G.contiguous()
        gx = _GMM.apply(y, G.transpose(1, 2), ctx.offs) if ctx.needs_input_grad[0] else None
        gy = _GMM.apply(x, G, ctx.offs) if ctx.needs_input_grad[1] else None
        return gx, gy, None


class EdgeLayout:
    """How E edges, each with an MLP type, are arranged into R packed rows for the typed matmuls.

    Two strategies, same interface (rows are 2-D (R, C) tensors):
      * `grouped` (float32 / bfloat16 / float16): edges sorted by type, each type's rows padded to a multiple of
        `GROUP_QUANTUM`, one segmented matmul per layer (`torch._grouped_mm`), no weight copies;
      * `blocked` (any dtype, e.g. float64 for parity): type-homogeneous blocks of `block` rows, one `baddbmm`
        per layer with per-block gathered weights.
    Padding rows are zero on input, computed but never read back, and get zero gradient.
    """

    def __init__(self, edge_type: torch.Tensor, n_types: int, dtype: torch.dtype, block: Optional[int] = None,
                 grouped: Optional[bool] = None):
        edge_type = edge_type.reshape(-1)
        E = edge_type.numel()
        dev = edge_type.device
        if grouped is None:
            grouped = (dtype in (torch.float32, torch.bfloat16, torch.float16) and hasattr(torch, "_grouped_mm")
                       and dev.type == "cpu")  # CUDA's grouped matmul takes bf16 on recent GPUs only
        self.grouped = grouped
        self.n_types = n_types
        counts = torch.bincount(edge_type, minlength=n_types)
        # Narrow keys sort several times faster (radix passes per byte): 33k edges, 0.70 ms as int64, 0.07 as uint8.
        key_dtype = torch.uint8 if n_types <= 256 else torch.int16 if n_types <= 32767 else edge_type.dtype
        order = torch.argsort(edge_type.to(key_dtype), stable=True)
        self.E = E
        if block is None:
            block = GROUP_QUANTUM if grouped else choose_block(E, n_types)
        nblk = (counts + block - 1) // block
        blk_start = torch.cumsum(nblk, 0) - nblk
        type_start = torch.cumsum(counts, 0) - counts
        t_sorted = edge_type[order]
        rank = torch.arange(E, device=dev) - type_start[t_sorted]
        slot = torch.empty_like(edge_type)
        slot[order] = blk_start[t_sorted] * block + rank
        self.slot = slot
        self.n_blocks = int(nblk.sum())
        self.block = block
        self.block_type = torch.repeat_interleave(torch.arange(n_types, device=dev), nblk)
        self.rows = self.n_blocks * block
        if grouped:
            self.offs = (torch.cumsum(nblk, 0) * block).to(torch.int32)
            self.row_type = self.block_type.repeat_interleave(block)

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """(E, C) per-edge values -> (R, C) packed rows (differentiable; padding rows are 0)."""
        out = values.new_zeros(self.rows, values.shape[-1])
        return out.index_copy(0, self.slot, values)

    def pack_index(self, idx: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """(E,) long -> (R,) long (padding rows get `fill`)."""
        out = idx.new_full((self.rows,), fill)
        out[self.slot] = idx
        return out

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """(R, C) -> (E, C) in the original edge order."""
        return rows.index_select(0, self.slot)

    def linear(self, h: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Typed linear layer on packed rows: h (R, in), w (T, out, in), b (T, out) -> (R, out)."""
        out_dim, in_dim = w.shape[1], w.shape[2]
        if self.grouped:
            # _grouped_mm needs 16-byte aligned strides: zero-pad odd sizes (e.g. 5 inputs, 1 or 3 outputs).
            pi, po = _pad_to(in_dim) - in_dim, _pad_to(out_dim) - out_dim
            if pi or po:
                w = F.pad(w, (0, pi, 0, po))
            if pi:
                h = F.pad(h, (0, pi))
            y = _GMM.apply(h.contiguous(), w.transpose(1, 2), self.offs)
            if po:
                y = y[:, :out_dim]
            if b is not None:
                y = y + b.index_select(0, self.row_type)
            return y
        nb, blk = self.n_blocks, self.block
        wb = w.index_select(0, self.block_type).transpose(1, 2)  # (nb, in, out)
        h3 = h.reshape(nb, blk, in_dim)
        if b is None:
            y = torch.bmm(h3, wb)
        else:
            y = torch.baddbmm(b.index_select(0, self.block_type).unsqueeze(1), h3, wb)
        return y.reshape(nb * blk, out_dim)


    def act_linear(self, z: torch.Tensor, act: str, w_aug: Optional[torch.Tensor], w: torch.Tensor,
                   b: torch.Tensor, beta: float = 100.0, keep_input: bool = False) -> torch.Tensor:
        """Typed layer applied to act(z): rows (R, in) -> (R, out), bias fused where possible.

        Grouped layouts fold the bias into the segmented matmul through a constant-one input column
        (`w_aug` = [w | b | 0], see `TypedLinearStack.augmented`), which saves the per-row bias gather and add;
        without autograd the activation is written straight into that padded buffer.  A chained z (R, in + 8),
        the output of a chained `w_aug`, already holds the constant columns: it is activated as it stands
        (in place unless keep_input), and a chained w_aug returns (R, out + 8) for the next layer in turn.
        """
        out_dim, in_dim = w.shape[1], w.shape[2]
        if not self.grouped:
            a = softplus(z, beta) if act == "softplus" else F.relu(z)
            return self.linear(a, w, b)
        if torch.is_grad_enabled() and z.requires_grad:
            # Under autograd the padded copy (and its non-contiguous gradient) costs more than a bias gather.
            a = softplus(z, beta) if act == "softplus" else F.relu(z)
            return self.linear(a, w, b)
        if z.shape[1] == in_dim + 8:
            # A contiguous elementwise pass: 1.75 ns per element against 2.5 when writing a strided buffer slice.
            if act == "softplus":
                a = softplus_no_grad(z, beta, inplace=not keep_input)
            else:
                a = torch.clamp_min(z, 0.0, out=None if keep_input else z)
        else:
            a = _ones_scratch(z.shape[0], w_aug.shape[2], z.dtype, in_dim, z.device)
            if act == "softplus":
                torch._C._nn.softplus(z, beta, 20.0, out=a[:, :in_dim])
            else:
                torch.clamp_min(z, 0.0, out=a[:, :in_dim])
        y = _GMM.apply(a, w_aug.transpose(1, 2), self.offs)
        if y.shape[1] == out_dim + 8:
            return y  # chained
        return y[:, :out_dim] if y.shape[1] != out_dim else y


_SCRATCH = threading.local()  # per thread: a buffer is only valid until the next matmul of its own thread


def _ones_scratch(rows: int, cols: int, dtype: torch.dtype, in_dim: int, device: torch.device) -> torch.Tensor:
    """Reusable (rows, cols) no-grad buffer whose columns >= in_dim hold 1 (the fused-bias input column).

    Only columns < in_dim are ever overwritten (by the activation), so the constant columns are filled once per
    allocation instead of once per layer; its content is consumed by the very next matmul.
    """
    cache = getattr(_SCRATCH, "bufs", None)
    if cache is None:
        cache = _SCRATCH.bufs = {}
    key = (cols, in_dim, dtype, device)
    buf = cache.get(key)
    if buf is None or buf.shape[0] < rows:
        with torch.inference_mode(False):  # a normal tensor, usable both inside and outside inference mode
            buf = torch.ones(max(rows, 1024), cols, dtype=dtype, device=device)
        cache[key] = buf
    return buf[:rows]


# Rows per type group of the segmented matmul are padded to a multiple of this.  The CPU grouped matmul runs one
# GEMM per group, and GEMM libraries handle ragged row counts badly: oneDNN builds (JITs) a new bfloat16 kernel for
# every new row count, and float32 runs remainder code.  2-core AMX host, 34 groups of ~1,200 random rows, K = N =
# 200: bfloat16 82 -> 623 GFLOP/s, float32 163 -> 225 GFLOP/s with 16-row groups; in the model, bf16 SDF-only
# 13.9k -> 37.9k pts/s at the official size, float32 unchanged within noise (padding costs ~1% more rows).
GROUP_QUANTUM = 16


# Float32 layers at least this wide, and all bfloat16 layers, pass their no-grad outputs on in chained form
# (`TypedLinearStack.augmented`): the activation then runs on a contiguous buffer instead of writing a strided slice
# of one (and bf16 softplus can use its lookup table).  2-core host, SDF-only pts/s, chained vs not: official size
# (200 wide) +9% float32, +16% bfloat16; built-in size (64 wide) float32 -5% (the 8 constant columns are an eighth
# more work there), bfloat16 with the lookup +9-19%.
CHAIN_MIN_WIDTH = 128


def chain_constants(like: torch.Tensor) -> torch.Tensor:
    """The 8 constant pre-activations a chained output carries, [1, -1, ..., -1] (activated: [1, 0, ..., 0])."""
    c = like.new_full((8,), -1.0)
    c[0] = 1.0
    return c


def chains(width: int, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether a no-grad layer of this output width hands the next layer its chained (R, width + 8) output."""
    return width % 8 == 0 and (width >= CHAIN_MIN_WIDTH or dtype == torch.bfloat16)


def choose_block(n_edges: int, n_types: int) -> int:
    """Rows per block: large enough to amortise the weight gather, small enough to limit padding waste."""
    per_type = max(1, n_edges // max(1, n_types))
    b = 1 << max(3, math.ceil(math.log2(per_type)))  # 8 .. : power of two >= mean edges per type
    return int(min(b, 256))


def make_layout(edge_type: torch.Tensor, n_types: int, dtype: torch.dtype = torch.float32,
                block: Optional[int] = None, grouped: Optional[bool] = None) -> EdgeLayout:
    return EdgeLayout(edge_type, n_types, dtype, block, grouped)


_BF16_TABLES = {}  # beta -> (65536,) bfloat16 softplus of every bfloat16 bit pattern
_BF16_TABLES_LOCK = threading.Lock()


def _bf16_softplus_table(beta: float) -> torch.Tensor:
    table = _BF16_TABLES.get(beta)
    if table is None:
        with _BF16_TABLES_LOCK, torch.inference_mode(False), torch.no_grad():
            every = torch.arange(65536, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)
            table = F.softplus(every.float(), beta=beta, threshold=20.0).to(torch.bfloat16)
            # Denormal results are 0, as in the model's forwards (`parallel.flush_denormals`), whatever the
            # thread's flush mode was when the table was built.
            table[table.float().abs() < torch.finfo(torch.float32).tiny] = 0
            _BF16_TABLES[beta] = table
    return table


_LOOKUP_SLICE = 1 << 17  # elements per table-lookup slice: its int32 indices stay in L2


def softplus_no_grad(z: torch.Tensor, beta: float, inplace: bool = False) -> torch.Tensor:
    """softplus(beta, threshold=20) without autograd, in place on z if asked.

    A bfloat16 input has only 65,536 values, so its softplus is a lookup in a 128 kB table of the float32
    softplus of each, rounded: the same values as the elementwise kernel (which also computes in float32), 2x
    faster (0.75 vs 1.53 ns per element on one thread of the 2-core host) when done in L2-sized slices (a single
    pass over a chunk's activations is memory-bound: 2.2 ns)."""
    if z.dtype != torch.bfloat16 or not z.is_contiguous() or z.device.type != "cpu":  # the lookup pays on CPUs
        return torch._C._nn.softplus(z, beta, 20.0, out=z) if inplace else F.softplus(z, beta, 20.0)
    table = _bf16_softplus_table(beta)
    out = z if inplace else torch.empty_like(z)
    bits, dst = z.view(torch.uint16).view(-1), out.view(-1)
    n = bits.numel()
    idx = _int32_scratch(min(n, _LOOKUP_SLICE))
    for s in range(0, n, _LOOKUP_SLICE):
        e = min(n, s + _LOOKUP_SLICE)
        i = idx[: e - s].copy_(bits[s:e])
        torch.index_select(table, 0, i, out=dst[s:e])
    return out


def _int32_scratch(n: int) -> torch.Tensor:
    buf = getattr(_SCRATCH, "int32", None)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):
            buf = _SCRATCH.int32 = torch.empty(max(n, 1024), dtype=torch.int32)
    return buf


def softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """nn.Softplus(beta, threshold=20) (identity where beta*x > 20, bit-level parity), with a cheaper double backward.

    Gradient losses (eikonal, normals) back-propagate through d softplus/dz once more; autograd's generic formula
    for that takes ~6 elementwise passes per hidden unit, `_SoftplusGrad` takes 3 (one sigmoid kept from the
    first backward)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Softplus.apply(x, beta)
    return F.softplus(x, beta=beta, threshold=20.0)


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, beta):
        ctx.save_for_backward(z)
        ctx.beta = beta
        return F.softplus(z, beta=beta, threshold=20.0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return _SoftplusGrad.apply(g, z, ctx.beta), None


class _SoftplusGrad(torch.autograd.Function):
    """g * softplus'(z) = g * sigmoid(beta z) (exactly g where beta z > 20), differentiable in g and z."""

    @staticmethod
    def forward(ctx, g, z, beta):
        ctx.save_for_backward(g, z)
        ctx.beta = beta
        return torch.ops.aten.softplus_backward(g, z, beta, 20.0)

    @staticmethod
    def backward(ctx, gg):
        g, z = ctx.saved_tensors
        beta = ctx.beta
        d_g = _SoftplusGrad.apply(gg, z, beta) if ctx.needs_input_grad[0] else None
        d_z = None
        if ctx.needs_input_grad[1]:
            bz = z * beta
            s = torch.sigmoid(bz)
            # d/dz [g sigmoid(beta z)] = g beta s (1 - s); 0 where the forward was the identity (beta z > 20),
            # which float32 gets for free (sigmoid(> 16.7) rounds to exactly 1)
            d_z = torch.ops.aten.sigmoid_backward(gg * g, s).mul_(beta)
            if z.dtype == torch.float64:
                d_z = d_z.masked_fill_(bz > 20.0, 0.0)
        return d_g, d_z, None


class TypedLinearStack(nn.Module):
    """`n_types` independent MLPs with identical shapes, stored stacked as (T, out, in).

    Layer l has weight `weights[l]` (T, out_l, in_l) and bias `biases[l]` (T, out_l); the layout of the
    official per-type `nn.Linear` weights (out, in) is kept so official state dicts copy over directly.
    """

    def __init__(self, n_types: int, dims: List[int]):
        super().__init__()
        self.n_types = n_types
        self.dims = list(dims)
        self._aug_cache = {}
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

    def layer(self, l: int, h: torch.Tensor, layout: EdgeLayout, dtype=None) -> torch.Tensor:
        """Apply linear layer l to packed rows h (R, in) -> (R, out)."""
        w, b = self.weights[l], self.biases[l]
        if dtype is not None and w.dtype != dtype:
            w, b = w.to(dtype), b.to(dtype)
        return layout.linear(h, w, b)

    def augmented(self, l: int, dtype=None, chain: bool = False) -> torch.Tensor:
        """[W | b | 0] of layer l, (T, pad8(out), in + 8): bias as the weight of a constant-one input column.

        chain=True (out a multiple of 8): (T, out + 8, in + 8), whose 8 extra outputs are the constants [1, -1, ...,
        -1]; softplus(beta=100) and ReLU map them to [1, 0, ..., 0] (softplus_100(-1) underflows to 0), so the
        activated output is the next layer's augmented input as it stands.
        Cached (per dtype and parameter version) when no gradient is needed; rebuilt inside autograd otherwise.
        """
        w, b = self.weights[l], self.biases[l]
        dtype = dtype or w.dtype
        need_graph = torch.is_grad_enabled() and (w.requires_grad or b.requires_grad)
        key = (l, dtype, chain)
        if not need_graph:
            hit = self._aug_cache.get(key)
            if hit is not None and hit[0] == (w._version, b._version, w.data_ptr(), b.data_ptr()):
                return hit[1]
        T, o, i = w.shape
        aug = torch.cat([w, b.unsqueeze(2), w.new_zeros(T, o, 7)], dim=2)
        if chain:
            const = w.new_zeros(T, 8, i + 8)
            const[:, :, i] = chain_constants(w)  # weights on the constant-one input column: the outputs are these
            aug = torch.cat([aug, const], dim=1)
        elif _pad_to(o) != o:
            aug = F.pad(aug, (0, 0, 0, _pad_to(o) - o))
        aug = aug.to(dtype)
        if not need_graph:
            if torch.is_inference_mode_enabled():
                with torch.inference_mode(False), torch.no_grad():  # cache a normal (non-inference) tensor
                    aug = aug.clone()
            self._aug_cache[key] = ((w._version, b._version, w.data_ptr(), b.data_ptr()), aug.detach())
        return aug

    def apply_hidden(self, l: int, z: torch.Tensor, layout: EdgeLayout, act: str, beta: float,
                     dtype=None, keep_input: bool = False) -> torch.Tensor:
        """Layer l applied to act(z) for packed pre-activations z (R, in), or a chained (R, in + 8) from layer l-1.

        Without autograd, a layer followed by another (l + 1 < n_linear) returns its chained output (R, out + 8):
        feed it to `apply_hidden(l + 1)`, or slice [:, :out] for anything else.  keep_input: z stays intact (it is
        otherwise activated in place when chained)."""
        w, b = self.weights[l], self.biases[l]
        if dtype is not None and w.dtype != dtype:
            w, b = w.to(dtype), b.to(dtype)
        needs_aug = layout.grouped and not (torch.is_grad_enabled() and z.requires_grad)
        # A chained output is activated in place by the next layer: only where no graph can reach this layer.
        weights_grad = torch.is_grad_enabled() and (w.requires_grad or b.requires_grad)
        chain = needs_aug and not weights_grad and l + 1 < self.n_linear and chains(w.shape[1], dtype)
        aug = self.augmented(l, dtype, chain) if needs_aug else None
        return layout.act_linear(z, act, aug, w, b, beta, keep_input)


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
