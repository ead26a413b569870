"""A plain MLP: the building block of the MLP VAE, the toy GAN and the feature classifier heads."""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers of `features` widths with `act` between them (none after the last)."""

    features: Sequence[int]
    act: Callable = nn.gelu
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x)
            if i < len(self.features) - 1:
                x = self.act(x)
        return x
