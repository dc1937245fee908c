"""Generalized linear attention: the functional core that replaces softmax self-attention.

For a query q_i and keys/values k_j, v_j (j = 1..N), with the feature map phi(x) = ELU(x) + 1:

    out_i = phi(q_i)^T (mean_j phi(k_j) v_j^T) / (phi(q_i)^T mean_j phi(k_j) + eps)

which equals sum_j w_ij v_j with w_ij = phi(q_i).phi(k_j) / (sum_j phi(q_i).phi(k_j) + N eps): every
query's weights sum to about one, as in softmax attention, but the N x N weight matrix never
exists. The two global statistics -- the (d x d) matrix mean_j phi(k_j) v_j^T and the d-vector
mean_j phi(k_j) -- are built once per head, then applied to every query: O(N d^2) time and
O(d^2) state instead of O(N^2 d).

Two numerical choices matter at 16K (millions of tokens per image):
- Sums are accumulated in fp32 whatever the input dtype (float64 inputs stay float64). An fp16 sum over millions of positive
  terms overflows (fp16 tops out at 65504) or stalls once the running sum dwarfs each term; that
  is where 16K renders break. Only the (d x d) state and one chunk of tokens are ever fp32.
- Means, not sums. Dividing by N keeps the output's scale independent of the token count, which
  is why weights trained at 512 px transfer to resolutions never seen in training.

Tokens are processed in chunks, both when building the state and when applying it, so the extra
memory is bounded by a chunk, never by N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Upper bound on the number of fp32 elements one chunk of one tensor may hold when chunk_size is
# left to us: 2**24 floats = 64 MiB. Below it, a whole tensor is processed in one go.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs; float64 inputs keep float64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = ELU(x) + 1, in the accumulation dtype, elementwise and strictly positive.

    At inference it returns a fresh contiguous tensor (never aliasing x): that single copy is the
    one the matmuls would make anyway, and ELU then runs in place on contiguous memory. When
    autograd is recording, the out-of-place ops are used (ELU's in-place backward needs its result
    untouched).
    """
    dtype = accumulation_dtype(x.dtype)
    if _needs_grad(x):
        return F.elu(x.to(dtype)) + 1.0
    out = x.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
    return F.elu(out, inplace=True).add_(1.0)


def _chunk_tokens(batch: int, heads: int, head_dim: int, chunk_size: int | None) -> int:
    """How many tokens one chunk holds: the caller's choice, or what fits DEFAULT_CHUNK_ELEMENTS."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
        return int(chunk_size)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, batch * heads * head_dim))


def _check_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  key_padding_mask: torch.Tensor | None) -> None:
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "query, key and value must be (batch, heads, tokens, head_dim); got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if key.shape != value.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    if query.shape[:2] != key.shape[:2] or query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree on batch, heads and head_dim")
    if key_padding_mask is not None:
        batch, _, tokens, _ = key.shape
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be a bool tensor (True = keep), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (batch, tokens):
            raise ValueError(
                f"key_padding_mask must be (batch, key tokens) = {(batch, tokens)}, got "
                f"{tuple(key_padding_mask.shape)}")


def linear_attention_state(key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                           chunk_size: int | None = None) -> torch.Tensor:
    """The keys' global statistics [mean_j phi(k_j) v_j^T | mean_j phi(k_j)] as one fp32 tensor.

    Both statistics come out of one matmul per chunk: phi(k)^T [v | 1]. Kept together they are
    also what data-parallel or patch-parallel workers would exchange (an average of states is the
    state of the union, for equal token counts), and the size does not depend on N.

    Args:
        key, value: (B, H, N, d) projected keys (before phi) and values, any float dtype.
        key_padding_mask: optional (B, N) bool, True = keep. Masked tokens contribute nothing
            and the means are over the kept tokens of each batch row only.
        chunk_size: tokens per chunk; None picks one that bounds the fp32 working set.

    Returns:
        (B, H, d, d + 1) fp32: columns :d are mean phi(k) v^T, column d is mean phi(k).
    """
    batch, heads, tokens, head_dim = key.shape
    step = _chunk_tokens(batch, heads, head_dim, chunk_size)
    dtype = accumulation_dtype(key.dtype)
    state = key.new_zeros((batch, heads, head_dim, head_dim + 1), dtype=dtype)  # (B, H, d, d+1)
    for start in range(0, tokens, step):
        stop = min(start + step, tokens)
        k = feature_map(key[:, :, start:stop])  # (B, H, n, d) fp32
        ones = k.new_ones(k.shape[:-1] + (1,))  # (B, H, n, 1)
        v = torch.cat([value[:, :, start:stop].to(dtype), ones], dim=-1)  # (B, H, n, d+1) fp32, contiguous
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, start:stop, None]  # (B, 1, n, 1)
            # where(), not a multiply: masked tokens may hold inf/NaN garbage and 0 * inf = NaN.
            k = torch.where(keep, k, 0.0)  # (B, H, n, d)
            v = torch.where(keep, v, 0.0)  # (B, H, n, d+1)
        state.add_(torch.matmul(k.transpose(-1, -2), v))  # (B, H, d, n) @ (B, H, n, d+1) -> (B, H, d, d+1)
    if key_padding_mask is None:
        count = torch.full((batch, 1), float(max(tokens, 1)), dtype=dtype, device=key.device)  # (B, 1)
    else:
        # A row with every key masked has nothing to attend to: its state stays zero, so its
        # output is 0 / (0 + eps) = 0 rather than NaN.
        count = key_padding_mask.sum(dim=1, dtype=dtype).clamp_(min=1.0)[:, None]  # (B, 1)
    return state / count[:, :, None, None]  # (B, H, d, d+1) / (B, 1, 1, 1)


def apply_linear_attention_state(query: torch.Tensor, state: torch.Tensor, eps: float = 1e-4,
                                 chunk_size: int | None = None) -> torch.Tensor:
    """out_i = phi(q_i)^T kv / (phi(q_i)^T k_mean + eps) for every query, in fp32, cast back.

    Args:
        query: (B, H, M, d) projected queries (before phi), any float dtype.
        state: (B, H, d, d + 1) from `linear_attention_state`.

    Returns:
        (B, H, M, d) in query's dtype and, for a dense query, query's memory layout: a query that
        is a transposed view of (B, M, H, d) projections gets an output that reshapes back to
        (B, M, H * d) without a copy.
    """
    batch, heads, tokens, head_dim = query.shape
    step = _chunk_tokens(batch, heads, head_dim, chunk_size)
    grad = _needs_grad(query, state)
    out = torch.empty_like(query)  # (B, H, M, d), same dtype and strides as query
    for start in range(0, tokens, step):
        stop = min(start + step, tokens)
        q = feature_map(query[:, :, start:stop])  # (B, H, m, d) fp32
        numerator_denominator = torch.matmul(q, state)  # (B, H, m, d) @ (B, H, d, d+1) -> (B, H, m, d+1)
        numerator = numerator_denominator[..., :head_dim]  # (B, H, m, d)
        denominator = numerator_denominator[..., head_dim:] + eps  # (B, H, m, 1)
        if grad:
            out[:, :, start:stop] = numerator / denominator  # (B, H, m, d), differentiable copy into the slice
        else:
            # Straight into the output chunk: the division and the cast to query's dtype in one pass.
            torch.div(numerator, denominator, out=out[:, :, start:stop])  # (B, H, m, d)
    return out


def generalized_linear_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, eps: float = 1e-4,
                                 key_padding_mask: torch.Tensor | None = None,
                                 chunk_size: int | None = None) -> torch.Tensor:
    """LinFusion's normalization-aware linear attention, non-causal, for projected q, k, v.

    Args:
        query: (B, H, M, d) projected queries, before the feature map.
        key: (B, H, N, d) projected keys, before the feature map. M may differ from N.
        value: (B, H, N, d) projected values.
        eps: added to each query's normaliser (published value 1e-4); it is added to a mean,
            so it weighs the same at every resolution.
        key_padding_mask: optional (B, N) bool, True = keep. Masked keys and values contribute
            nothing; means (and so the eps term) are over the kept keys of each row.
        chunk_size: tokens per chunk when building and applying the state; None bounds each
            fp32 chunk to DEFAULT_CHUNK_ELEMENTS elements. Results do not depend on it beyond
            fp32 rounding.

    Returns:
        (B, H, M, d), same dtype as query. Accumulation is fp32 for fp16/bf16/fp32 inputs.

    Differentiable (autograd takes out-of-place paths when it is recording), for distillation.
    """
    _check_inputs(query, key, value, key_padding_mask)
    state = linear_attention_state(key, value, key_padding_mask, chunk_size)  # (B, H, d, d+1)
    return apply_linear_attention_state(query, state, eps, chunk_size)  # (B, H, M, d)
