"""Small convolutional encoder/decoder pairs for images from 8x8 up to 64x64.

The encoder halves the resolution at each stage (stride-2 convs) and ends in a dense layer; the decoder
mirrors it with a dense layer and transposed convs. Shapes that do not halve evenly (28x28 -> 14 -> 7)
work because the decoder starts from the encoder's last feature-map size, computed from the input shape.

`spatial=True` keeps the feature map instead (the autoencoders of latent diffusion): the encoder ends
in a 3x3 conv to `out_features` channels, (B, H / 2^stages, W / 2^stages, out_features), and the decoder
starts from such a map with a 3x3 conv instead of the dense layer.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def downsampled(size: int, stages: int) -> int:
    for _ in range(stages):
        size = (size + 1) // 2
    return size


class ConvEncoder(nn.Module):
    channels: Sequence[int]
    out_features: int  # channels of the output map when `spatial`
    dtype: jnp.dtype = jnp.float32
    spatial: bool = False

    @nn.compact
    def __call__(self, x):
        for i, ch in enumerate(self.channels):
            x = nn.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.gelu(x)
        if self.spatial:
            return nn.Conv(self.out_features, (3, 3), dtype=self.dtype, name="out")(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.out_features, dtype=self.dtype, name="out")(x)


class ConvDecoder(nn.Module):
    """z -> (H, W, C) map of unnormalized outputs (logits or means), the encoder mirrored.

    z: (B, D) vectors, or with `spatial` (B, H / 2^stages, W / 2^stages, D) maps."""

    channels: Sequence[int]  # the encoder's channels; used in reverse
    image_shape: Sequence[int]
    dtype: jnp.dtype = jnp.float32
    spatial: bool = False

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        stages = len(self.channels)
        sh, sw = downsampled(h, stages), downsampled(w, stages)
        if self.spatial:
            x = nn.gelu(nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype, name="in")(z))
        else:
            x = nn.Dense(sh * sw * self.channels[-1], dtype=self.dtype, name="in")(z)
            x = nn.gelu(x).reshape(z.shape[0], sh, sw, self.channels[-1])
        for i, ch in enumerate(reversed(self.channels)):
            x = nn.ConvTranspose(ch, (3, 3), strides=(2, 2), dtype=self.dtype, name=f"deconv{i}")(x)
            x = nn.gelu(x)
        x = x[:, :h, :w]  # crop the overshoot of odd sizes (7 -> 14 -> 28 is exact; 5 -> 10 > 9 is not)
        return nn.Conv(c, (3, 3), dtype=self.dtype, name="out")(x)
