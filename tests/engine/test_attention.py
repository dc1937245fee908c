"""The functional core against a naive, obviously-correct implementation of LinFusion's formula.

The reference follows linfusion.md section 1 literally: explicit phi, the explicit (M x N) matrix
of q.k weights, and out_i = sum_j w_ij v_j / (sum_j w_ij + N eps), in float64, with masked keys
simply left out of each batch row.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from linfusion_engine.attention import generalized_linear_attention

EPS = 1e-4


def naive_linear_attention(query, key, value, eps=EPS, key_padding_mask=None):
    """(B, H, M, d) output in float64, one batch row at a time."""
    rows = []
    for b in range(query.shape[0]):
        q = F.elu(query[b].double()) + 1  # (H, M, d)
        k = F.elu(key[b].double()) + 1  # (H, N, d)
        v = value[b].double()  # (H, N, d)
        if key_padding_mask is not None:
            k, v = k[:, key_padding_mask[b]], v[:, key_padding_mask[b]]  # (H, N_kept, d)
        weights = q @ k.transpose(-1, -2)  # (H, M, N_kept)
        tokens = k.shape[1]
        rows.append((weights @ v) / (weights.sum(dim=-1, keepdim=True) + tokens * eps))  # (H, M, d)
    return torch.stack(rows)  # (B, H, M, d)


def random_qkv(batch, heads, q_tokens, k_tokens, head_dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, q_tokens, head_dim, generator=gen).to(dtype)
    key = torch.randn(batch, heads, k_tokens, head_dim, generator=gen).to(dtype)
    value = torch.randn(batch, heads, k_tokens, head_dim, generator=gen).to(dtype)
    return query, key, value


@pytest.mark.parametrize("batch,heads,q_tokens,k_tokens,head_dim", [
    (1, 1, 16, 16, 40),
    (2, 8, 77, 77, 40),
    (2, 5, 64, 64, 64),
    (1, 2, 33, 129, 160),  # fewer queries than keys
    (3, 1, 200, 9, 64),  # more queries than keys
])
def test_matches_naive_reference_fp32(batch, heads, q_tokens, k_tokens, head_dim):
    query, key, value = random_qkv(batch, heads, q_tokens, k_tokens, head_dim)
    out = generalized_linear_attention(query, key, value)
    assert out.shape == query.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive_linear_attention(query, key, value), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_dim", [40, 64, 160])
def test_bf16_accumulates_in_fp32_and_returns_bf16(head_dim):
    query, key, value = random_qkv(2, 4, 96, 96, head_dim, dtype=torch.bfloat16)
    out = generalized_linear_attention(query, key, value)
    assert out.dtype == torch.bfloat16 and out.shape == query.shape
    # The reference sees the same bf16 values; the only bf16 rounding left is the final cast.
    torch.testing.assert_close(out.double(), naive_linear_attention(query, key, value), rtol=1e-2, atol=1e-2)


def test_fp16_sums_over_many_tokens_do_not_overflow():
    # 100k tokens of phi(k) * v = 2 * 8: an fp16 running sum would pass 65504 and become inf.
    tokens = 100_000
    query = torch.ones(1, 1, 4, 8, dtype=torch.float16)
    key = torch.ones(1, 1, tokens, 8, dtype=torch.float16)
    value = torch.full((1, 1, tokens, 8), 8.0, dtype=torch.float16)
    assert torch.isinf((F.elu(key) + 1).mul(value).sum(dim=2)).all()  # what the fp16 sum would do
    out = generalized_linear_attention(query, key, value)
    assert out.dtype == torch.float16
    # All keys equal: every query gets v back, scaled by q.k / (q.k + eps) with q.k = 8 * 2 * 2.
    torch.testing.assert_close(out.float(), torch.full((1, 1, 4, 8), 8.0 * 32 / (32 + EPS)), rtol=1e-3, atol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_equals_unchunked(chunk_size):
    query, key, value = random_qkv(2, 3, 150, 100, 64)
    whole = generalized_linear_attention(query, key, value, chunk_size=None)
    chunked = generalized_linear_attention(query, key, value, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_chunked_bf16_keeps_dtype_and_layout_of_a_transposed_query():
    # The processor hands in (B, N, H, d) projections transposed to (B, H, N, d).
    query, key, value = (t.transpose(1, 2).contiguous().transpose(1, 2)
                         for t in random_qkv(2, 4, 50, 50, 40, dtype=torch.bfloat16))
    out = generalized_linear_attention(query, key, value, chunk_size=8)
    assert out.dtype == torch.bfloat16 and out.stride() == query.stride()
    torch.testing.assert_close(out.double(), naive_linear_attention(query, key, value), rtol=1e-2, atol=1e-2)


def test_key_padding_mask_matches_reference_and_ignores_garbage():
    query, key, value = random_qkv(3, 2, 40, 60, 64)
    mask = torch.rand(3, 60, generator=torch.Generator().manual_seed(1)) > 0.4  # (B, N), True = keep
    mask[2, :50] = False  # one row keeps only a few keys
    out = generalized_linear_attention(query, key, value, key_padding_mask=mask)
    torch.testing.assert_close(out.double(), naive_linear_attention(query, key, value, key_padding_mask=mask),
                               rtol=1e-4, atol=1e-5)
    garbage_key, garbage_value = key.clone(), value.clone()
    garbage_key[~mask[:, None, :, None].expand_as(key)] = 1e4
    garbage_value[~mask[:, None, :, None].expand_as(value)] = float("nan")
    for chunk_size in (None, 7):
        again = generalized_linear_attention(query, garbage_key, garbage_value, key_padding_mask=mask,
                                             chunk_size=chunk_size)
        torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-6)


def test_means_are_over_kept_keys_only():
    # Padding a sequence with masked tokens must give exactly the unpadded result, eps term included.
    query, key, value = random_qkv(1, 2, 10, 30, 40)
    padded_key = torch.cat([key, torch.randn(1, 2, 70, 40)], dim=2)  # (B, H, 100, d)
    padded_value = torch.cat([value, torch.randn(1, 2, 70, 40)], dim=2)  # (B, H, 100, d)
    mask = torch.arange(100)[None] < 30  # (1, 100)
    torch.testing.assert_close(
        generalized_linear_attention(query, padded_key, padded_value, key_padding_mask=mask),
        generalized_linear_attention(query, key, value), rtol=1e-5, atol=1e-6)


def test_a_row_with_every_key_masked_gives_zeros_not_nan():
    query, key, value = random_qkv(2, 1, 5, 5, 40)
    mask = torch.tensor([[True] * 5, [False] * 5])
    out = generalized_linear_attention(query, key, value, key_padding_mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


def test_output_scale_does_not_depend_on_token_count():
    # Repeating the keys/values 50 times changes N but not the means: same output (mean, not sum).
    query, key, value = random_qkv(1, 2, 8, 20, 64)
    once = generalized_linear_attention(query, key, value)
    many = generalized_linear_attention(query, key.repeat(1, 1, 50, 1), value.repeat(1, 1, 50, 1))
    torch.testing.assert_close(many, once, rtol=1e-4, atol=1e-5)


def test_a_million_tokens_in_bounded_memory():
    # A tokens x tokens matrix would need 4 TB here; chunks keep the working set small.
    query, key, value = random_qkv(1, 1, 1 << 20, 1 << 20, 4)
    out = generalized_linear_attention(query, key, value, chunk_size=1 << 18)
    assert out.shape == query.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, :3].double(),
                               naive_linear_attention(query[:, :, :3], key, value), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)), "same shape"),
    (((1, 2, 4, 8), (1, 3, 4, 8), (1, 3, 4, 8)), "must agree"),
    (((2, 4, 8), (2, 4, 8), (2, 4, 8)), "(batch, heads, tokens, head_dim)"),
])
def test_bad_shapes_are_named(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generalized_linear_attention(*(torch.randn(shape) for shape in args))


def test_bad_mask_is_named():
    query, key, value = random_qkv(2, 1, 4, 6, 8)
    with pytest.raises(ValueError, match="bool"):
        generalized_linear_attention(query, key, value, key_padding_mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"\(batch, key tokens\)"):
        generalized_linear_attention(query, key, value, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))


def test_gradients_match_finite_differences():
    # Distillation trains through this function: float64 inputs stay float64 for gradcheck.
    query, key, value = (t.double().requires_grad_() for t in random_qkv(2, 2, 5, 7, 3))
    mask = torch.tensor([[True] * 7, [True, False, True, True, False, True, True]])
    assert torch.autograd.gradcheck(
        lambda q, k, v: generalized_linear_attention(q, k, v, key_padding_mask=mask, chunk_size=3),
        (query, key, value))


def test_gradients_flow_in_bf16():
    query, key, value = (t.requires_grad_() for t in random_qkv(1, 2, 9, 9, 8, dtype=torch.bfloat16))
    generalized_linear_attention(query, key, value, chunk_size=4).float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all()
               for t in (query, key, value))
