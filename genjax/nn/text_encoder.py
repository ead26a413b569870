"""A bidirectional transformer text encoder (CLIP's text tower in miniature) built from the transformer
family's blocks (`genjax.nn.attention.Block`, given a padding mask instead of the causal one).

    states, mask = TextEncoder(vocab_size=38, max_len=13, width=64, layers=2, heads=4)(tokens)

`tokens` (B, T) int32 with PAD = 0 after the text; every row starts with a BOS token, so the empty prompt
is one real token and no softmax (here or in the U-Net's cross-attention) runs over nothing. Returns the
token states (B, T, width) after a final LayerNorm and the key mask (B, T) bool (True at real tokens)
that cross-attention applies.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from genjax.nn.attention import Block, Norm, normal, residual_std

PAD, BOS = 0, 1  # token ids every tokenizer of this encoder reserves


class TextEncoder(nn.Module):
    vocab_size: int  # including PAD and BOS
    max_len: int  # positions (BOS included)
    width: int = 64
    layers: int = 2
    heads: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        b, t = tokens.shape
        keep = tokens != PAD
        x = nn.Embed(self.vocab_size, self.width, embedding_init=normal(0.02), name="token_embed")(tokens)
        x = x + self.param("pos_embed", normal(0.01), (self.max_len, self.width), jnp.float32)[:t]
        # every query (padding ones too: their outputs are never read) sees the real tokens only
        mask = jnp.broadcast_to(keep[:, None, None, :], (b, 1, t, t))
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        x = x.astype(self.dtype)
        for i in range(self.layers):
            block = Block(n_head=self.heads, d_ff=4 * self.width, out_std=residual_std(self.layers),
                          implementation="einsum", dtype=self.dtype, name=f"layer_{i}")
            x, _ = block(x, positions, mask=mask)
        return Norm(dtype=jnp.float32, name="ln_f")(x), keep
