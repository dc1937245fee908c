"""GeneralizedLinearAttnProcessor as a diffusers processor: parity with the functional core by hand."""

from __future__ import annotations

import contextlib
import inspect
import logging

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging

from linfusion_engine.attention import generalized_linear_attention
from linfusion_engine.processor import GeneralizedLinearAttnProcessor

PUBLISHED_KEYS = {
    "to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias",
    "to_q_.0.weight", "to_q_.0.bias", "to_q_.1.weight", "to_q_.1.bias", "to_q_.3.weight", "to_q_.3.bias",
    "to_k_.0.weight", "to_k_.0.bias", "to_k_.1.weight", "to_k_.1.bias", "to_k_.3.weight", "to_k_.3.bias",
}


def self_attention(dim=64, heads=4, **kwargs) -> Attention:
    """An SD-style attn1: no q/k/v bias, out bias, C -> C."""
    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, **kwargs).eval()


def trained_processor(dim=64, heads=4, mid=16, seed=1) -> GeneralizedLinearAttnProcessor:
    """A processor whose every weight is random and non-zero, like a trained checkpoint's."""
    torch.manual_seed(seed)
    processor = GeneralizedLinearAttnProcessor(dim, heads, mid)
    with torch.no_grad():
        for param in processor.parameters():
            param.normal_(0, 0.2)
    return processor.eval()


def by_hand(x, heads, to_q, to_k, to_v, to_out, mlp_q=None, mlp_k=None):
    """The published layer: q = W_q(x + MLP_q(x)), ... through the functional core. x: (B, N, C)."""
    batch, tokens, channels = x.shape
    q = to_q(x + mlp_q(x)) if mlp_q else to_q(x)  # (B, N, C)
    k = to_k(x + mlp_k(x)) if mlp_k else to_k(x)  # (B, N, C)
    v = to_v(x)  # (B, N, C)
    q, k, v = (t.view(batch, tokens, heads, channels // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
    out = generalized_linear_attention(q, k, v)  # (B, H, N, d)
    return to_out(out.transpose(1, 2).reshape(batch, tokens, channels))  # (B, N, C)


@contextlib.contextmanager
def diffusers_warnings():
    """Collect the warnings diffusers logs (its loggers do not propagate to the root logger)."""
    records: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    root = diffusers_logging.get_logger("diffusers")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def test_weights_use_the_published_names():
    processor = GeneralizedLinearAttnProcessor(320, 8, 20)
    assert set(processor.state_dict()) == PUBLISHED_KEYS
    assert processor.to_q.bias is None and processor.to_out[0].bias is not None
    assert processor.to_q_[0].weight.shape == (20, 320) and processor.to_q_[1].weight.shape == (20,)
    assert GeneralizedLinearAttnProcessor(320, 8).to_k_[3].weight.shape == (320, 320)  # m = C by default


def test_mounted_processor_matches_the_functional_core_by_hand():
    attn, processor = self_attention(), trained_processor()
    x = torch.randn(2, 50, 64)
    attn.set_processor(processor)
    with torch.no_grad():
        expected = by_hand(x, 4, processor.to_q, processor.to_k, processor.to_v, processor.to_out[0],
                           processor.to_q_, processor.to_k_)
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_processor_weights_ignore_the_host_projections():
    attn, processor = self_attention(), trained_processor()
    x = torch.randn(1, 20, 64)
    attn.set_processor(processor)
    with torch.no_grad():
        before = attn(x)
        for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            linear.weight.mul_(3.0)
        torch.testing.assert_close(attn(x), before, rtol=0, atol=0)


def test_no_argument_processor_uses_the_host_projections():
    attn = self_attention()
    weightless = GeneralizedLinearAttnProcessor()
    assert not weightless.has_weights and list(weightless.parameters()) == []
    attn.set_processor(weightless)
    x = torch.randn(2, 30, 64)
    with torch.no_grad():
        expected = by_hand(x, attn.heads, attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_rebuilt_as_type_of_processor_like_load_ip_adapter_does():
    rebuilt = type(trained_processor())()
    assert isinstance(rebuilt, GeneralizedLinearAttnProcessor) and not rebuilt.has_weights


def test_four_dim_input_with_group_norm_residual_and_rescale():
    # The shape of a VAE / UNet mid-block attention: (B, C, H, W) in, group norm, residual, rescale.
    attn = self_attention(dim=32, heads=1, norm_num_groups=8, residual_connection=True,
                          rescale_output_factor=2.0, bias=True)
    attn.set_processor(GeneralizedLinearAttnProcessor())
    image = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        tokens = attn.group_norm(image.view(2, 32, 30)).transpose(1, 2)  # (B, N, C)
        attended = by_hand(tokens, 1, attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])  # (B, N, C)
        expected = (attended.transpose(1, 2).reshape(2, 32, 6, 5) + image) / 2.0  # (B, C, H, W)
        torch.testing.assert_close(attn(image), expected, rtol=1e-5, atol=1e-6)


def test_additive_attention_mask_drops_keys_like_a_key_padding_mask():
    attn, processor = self_attention(), trained_processor()
    attn.set_processor(processor)
    x = torch.randn(2, 12, 64)
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[0, 8:] = False
    bias = (~keep).float()[:, None, :] * -10000.0  # (B, 1, N), as UNet2DConditionModel builds it
    with torch.no_grad():
        masked = attn(x, attention_mask=bias)
        assert torch.equal(attn(x, attention_mask=keep), masked)
        # Row 0 sees only its first 8 tokens as keys: the same as attending over those 8 alone.
        q = processor.to_q(x[:1] + processor.to_q_(x[:1])).view(1, 12, 4, 16).transpose(1, 2)  # (1, H, 12, d)
        k = processor.to_k(x[:1, :8] + processor.to_k_(x[:1, :8])).view(1, 8, 4, 16).transpose(1, 2)  # (1, H, 8, d)
        v = processor.to_v(x[:1, :8]).view(1, 8, 4, 16).transpose(1, 2)  # (1, H, 8, d)
        out = generalized_linear_attention(q, k, v).transpose(1, 2).reshape(1, 12, 64)  # (1, 12, C)
        torch.testing.assert_close(masked[:1], processor.to_out[0](out), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask,message", [
    (torch.full((2, 1, 12), -0.5), "soft attention bias"),
    (torch.zeros(2, 12, 12), "per-key mask only"),
    (torch.zeros(2, 1, 7), r"\(batch, tokens\)"),
])
def test_masks_linear_attention_cannot_apply_are_refused(mask, message):
    attn = self_attention()
    attn.set_processor(GeneralizedLinearAttnProcessor())
    with pytest.raises(ValueError, match=message):
        attn(torch.randn(2, 12, 64), attention_mask=mask)


def test_cross_attention_use_is_refused():
    attn = self_attention()
    attn.set_processor(GeneralizedLinearAttnProcessor())
    with pytest.raises(ValueError, match="self-attention"):
        attn(torch.randn(1, 4, 64), encoder_hidden_states=torch.randn(1, 3, 64))


def test_becomes_a_submodule_of_the_attention_and_leaves_with_set_processor():
    attn, processor = self_attention(), trained_processor()
    attn.set_processor(processor)
    assert {key for key in attn.state_dict() if key.startswith("processor.")} == {
        f"processor.{key}" for key in PUBLISHED_KEYS}
    attn.to(torch.float64)
    assert processor.to_q.weight.dtype == torch.float64  # it follows .to() of its host
    attn.set_processor(AttnProcessor2_0())
    assert not any(key.startswith("processor.") for key in attn.state_dict())


def test_diffusers_passes_the_same_kwargs_as_to_its_default_processor():
    # Attention.forward filters cross_attention_kwargs by `inspect.signature(processor.__call__)`;
    # a bare nn.Module's (*args, **kwargs) would drop `temb` with a warning on every call.
    def names(processor):
        return set(inspect.signature(processor.__call__).parameters)

    assert names(GeneralizedLinearAttnProcessor()) == names(AttnProcessor2_0())
    attn = self_attention()
    attn.set_processor(GeneralizedLinearAttnProcessor())
    with diffusers_warnings() as warnings, torch.no_grad():
        attn(torch.randn(1, 4, 64), temb=None, ip_adapter_masks=None)
    assert warnings == []


def test_bf16_processor_returns_bf16_close_to_fp32():
    attn, processor = self_attention(), trained_processor()
    attn.set_processor(processor)
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        reference = attn(x)
        attn.to(torch.bfloat16)
        out = attn(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kwargs,message", [
    ({"dim_n": 64, "heads": 5}, "positive divisor"),
    ({"dim_n": 64}, "positive divisor"),
    ({"heads": 4}, "need dim_n"),
])
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneralizedLinearAttnProcessor(**kwargs)
