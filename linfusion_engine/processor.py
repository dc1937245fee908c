"""A diffusers attention processor that computes LinFusion's generalized linear attention.

diffusers keeps an attention layer's weights in its `Attention` module and the maths in a
processor chosen with `set_processor`. LinFusion's layer has weights of its own (Q/K/V/out and two
small MLPs), so this processor is an `nn.Module` that carries them: set on an `Attention`, it
becomes a submodule there (its parameters appear in the UNet's state_dict, get gradients and
follow `.to()`), and setting any other processor removes it again, leaving the host's own weights
untouched.

The weights are stored under the names of the published LinFusion checkpoints:
`to_q`, `to_k`, `to_v` (Linear, no bias), `to_out.0` (Linear with bias), and
`to_q_` / `to_k_` = Sequential(Linear(C, m), LayerNorm(m), LeakyReLU, Linear(m, C)), so that
`to_q_.0`, `to_q_.1` and `to_q_.3` are the keys.

A processor built with no arguments has no weights: it runs generalized linear attention with the
host's own to_q/to_k/to_v/to_out and no MLP (x + 0 = x). diffusers' `load_ip_adapter` rebuilds
every self-attention processor as `type(processor)()`, so this keeps such a UNet working (as
untrained linear attention) until the engine mounts the real weights again.
"""

from __future__ import annotations

import torch
from torch import nn

from linfusion_engine.attention import generalized_linear_attention

# A float attention mask is diffusers' additive bias: 0 keeps a key, -10000 (or -inf) drops it.
# Linear attention can only keep or drop a key, so a bias between these is refused.
_DROP_BIAS_THRESHOLD = -1000.0


def projection_mlp(dim: int, mid_dim: int) -> nn.Sequential:
    """LinFusion's token-wise MLP, Linear(C, m) -> LayerNorm(m) -> LeakyReLU -> Linear(m, C)."""
    # In-place LeakyReLU: its input is the LayerNorm output, needed by nothing else (and autograd
    # differentiates leaky_relu_ through its result).
    return nn.Sequential(nn.Linear(dim, mid_dim), nn.LayerNorm(mid_dim), nn.LeakyReLU(inplace=True),
                         nn.Linear(mid_dim, dim))


def key_padding_mask_from_attention_mask(attention_mask: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
    """Turn the mask diffusers hands a self-attention layer into a (B, N) bool key mask.

    Accepts a bool mask (True = keep) or an additive float bias (0 = keep, <= -1000 = drop), of
    shape (B, N) or (B, 1, N) -- the form UNet2DConditionModel builds from its `attention_mask`.
    A mask that differs per query, or a soft bias, has no linear-attention equivalent: ValueError.
    """
    mask = attention_mask
    if mask.ndim == 3:
        if mask.shape[1] != 1:
            raise ValueError(
                f"linear attention supports a per-key mask only; got an attention mask of shape "
                f"{tuple(mask.shape)} that differs per query")
        mask = mask[:, 0]  # (B, N)
    if tuple(mask.shape) != (batch, tokens):
        raise ValueError(f"attention mask must be (batch, tokens) = {(batch, tokens)} or (batch, 1, tokens); got "
                         f"{tuple(attention_mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    keep = mask == 0  # (B, N)
    drop = mask <= _DROP_BIAS_THRESHOLD  # (B, N)
    if not bool((keep | drop).all()):
        raise ValueError("linear attention cannot apply a soft attention bias: float masks must be 0 (keep) "
                         f"or <= {_DROP_BIAS_THRESHOLD:g} (drop)")
    return keep


class GeneralizedLinearAttnProcessor(nn.Module):
    """Self-attention processor: q = phi(W_q(x + MLP_q(x))), k = phi(W_k(x + MLP_k(x))), v = W_v x.

    Args:
        dim_n: the layer's channels C (query dim = inner dim). None builds a weightless processor
            that uses the host Attention's own projections and no MLP.
        heads: number of heads h (head size C / h). Required with dim_n.
        projection_mid_dim: the MLPs' hidden width m; None means m = C (SD-1.5/2.1 checkpoints),
            SD-XL checkpoints use C / 16.
    """

    def __init__(self, dim_n: int | None = None, heads: int | None = None,
                 projection_mid_dim: int | None = None) -> None:
        super().__init__()
        if dim_n is None:
            if heads is not None or projection_mid_dim is not None:
                raise ValueError("heads and projection_mid_dim need dim_n; leave all three out for a weightless processor")
            self.dim_n = self.heads = self.projection_mid_dim = None
            return
        if heads is None or heads < 1 or dim_n % heads:
            raise ValueError(f"heads must be a positive divisor of dim_n={dim_n}, got {heads}")
        self.dim_n, self.heads, self.projection_mid_dim = dim_n, heads, projection_mid_dim
        mid_dim = projection_mid_dim or dim_n
        self.to_q = nn.Linear(dim_n, dim_n, bias=False)
        self.to_k = nn.Linear(dim_n, dim_n, bias=False)
        self.to_v = nn.Linear(dim_n, dim_n, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim_n, dim_n)])
        self.to_q_ = projection_mlp(dim_n, mid_dim)
        self.to_k_ = projection_mlp(dim_n, mid_dim)

    @property
    def has_weights(self) -> bool:
        """False for the no-argument processor, which borrows the host Attention's projections."""
        return self.dim_n is not None

    def extra_repr(self) -> str:
        if not self.has_weights:
            return "weightless: uses the host Attention's to_q/to_k/to_v/to_out"
        return f"dim_n={self.dim_n}, heads={self.heads}, projection_mid_dim={self.projection_mid_dim}"

    # Attention.forward keeps only the cross_attention_kwargs named in `processor.__call__`'s
    # signature and warns about the rest. nn.Module.__call__ is (*args, **kwargs), which would drop
    # and warn about every key; naming the parameters here makes this processor accept exactly
    # what diffusers' default AttnProcessor2_0 accepts. Keys neither uses still get diffusers'
    # warning, as they would with the default processor.
    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                *args, **kwargs) -> torch.Tensor:
        """Same contract as diffusers' AttnProcessor2_0, for self-attention only.

        Extra positional/keyword arguments (other processors' options) are accepted and ignored:
        linear self-attention has no per-call options.
        """
        if encoder_hidden_states is not None:
            raise ValueError(
                "GeneralizedLinearAttnProcessor replaces self-attention (attn1) only; it was called with "
                "encoder_hidden_states, i.e. as a cross-attention layer")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)  # (B, N, C)
        batch, tokens, _ = hidden_states.shape

        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = key_padding_mask_from_attention_mask(attention_mask, batch, tokens)  # (B, N)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)  # (B, N, C)

        if self.has_weights:
            heads = self.heads
            query = self.to_q(hidden_states + self.to_q_(hidden_states))  # (B, N, C)
            key = self.to_k(hidden_states + self.to_k_(hidden_states))  # (B, N, C)
            value = self.to_v(hidden_states)  # (B, N, C)
        else:
            heads = attn.heads
            query = attn.to_q(hidden_states)  # (B, N, C)
            key = attn.to_k(hidden_states)  # (B, N, C)
            value = attn.to_v(hidden_states)  # (B, N, C)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        if not self.has_weights:
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)

        hidden_states = generalized_linear_attention(query, key, value, key_padding_mask=key_padding_mask)  # (B, H, N, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, heads * head_dim)  # (B, N, C)

        out_proj = self.to_out[0] if self.has_weights else attn.to_out[0]
        hidden_states = out_proj(hidden_states)  # (B, N, C)
        if len(attn.to_out) > 1:  # the host's dropout, so train/eval behave as with the original layer
            hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)  # (B, C, H, W)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
