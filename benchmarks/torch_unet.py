"""Plain PyTorch reference of genjax's diffusion U-Net and train step (CPU eager), for side by side
benchmarks.

The module is `genjax.nn.unet.UNet` layer for layer, NCHW inside: the same sinusoidal time embedding
of t * 1000 and its two-layer MLP (4 x channels, swish), optional class embedding (num_classes + 1
rows, the last the null label), levels of residual blocks (GroupNorm with gcd(num_groups, width)
groups and eps 1e-6, swish, 3x3 conv, time embedding added, GroupNorm, swish, dropout, 3x3 conv, 1x1
skip conv where the width changes), single-head self-attention where the padded feature-map side is in
`attn_resolutions`, stride-2 3x3 downsampling with XLA's SAME padding (0 before, 1 after), the mirror
image with skip concatenation ([h, skip]) and nearest x2 upsampling + 3x3 conv, input zero-padded to a
multiple of 2^(levels - 1) and the output cropped back. Same parameters (submodules carry the Flax
names) and the same init: fan-avg uniform weights (= Xavier uniform), zero biases, zero-initialized
residual-branch ends (conv2, attention proj, conv_out) and GroupNorm 1/0 (only the class embedding's
normal is not truncated); `load_flax_params` copies genjax's params in.

`make_trainer` is genjax's `diffusion.loss` + `train.make_step` + `train.make_optimizer`: images in
[0, 1] scaled to [-1, 1], t = i / T with i ~ U{1..T} (or U(1e-3, 1) for T = 0), the linear or cosine
log-SNR schedule (clipped at -20), x_t = alpha x0 + sigma eps, an unweighted MSE against the eps, x0 or
v target; global-norm clipping, AdamW (Adam at weight decay 0) under linear warmup + cosine decay to
10% of the peak, a skipped update on non-finite loss or gradients, and an EMA of the weights. The
random draws (t, noise) are torch's, so losses agree in distribution, not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from benchmarks.torch_gpt import lr_at
except ImportError:  # run as a script from benchmarks/
    from torch_gpt import lr_at

TIME_SCALE = 1000.0
LOGSNR_MIN = -20.0
COSINE_S = 0.008
T_MIN_CONTINUOUS = 1e-3


def padded_size(size: int, num_levels: int) -> int:
    m = 2 ** (num_levels - 1)
    return -(-size // m) * m


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    args = (t.float() * TIME_SCALE)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(num_groups, channels), channels, eps=1e-6)


def conv(cin: int, cout: int, k: int, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0)
    nn.init.zeros_(layer.weight) if zero else nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def dense(cin: int, cout: int, zero: bool = False) -> nn.Linear:
    layer = nn.Linear(cin, cout)
    nn.init.zeros_(layer.weight) if zero else nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, num_groups), conv(cin, cout, 3)
        self.emb_proj = dense(emb_dim, cout)
        self.norm2, self.dropout = group_norm(cout, num_groups), nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, 3, zero=True)
        self.skip = conv(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm, self.qkv, self.proj = group_norm(channels, num_groups), dense(channels, 3 * channels), \
            dense(channels, channels, zero=True)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).reshape(b, c, h * w).transpose(1, 2)).chunk(3, dim=-1)
        y = self.proj(F.scaled_dot_product_attention(q, k, v))  # softmax(q k^T / sqrt(c)) v
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """genjax.nn.unet.UNet for (B, in_channels, image_size, W) inputs (image_size decides attention)."""

    def __init__(self, in_channels: int, out_channels: int, image_size: int, channels: int = 128,
                 channel_mults=(1, 2, 2, 2), num_res_blocks: int = 2, attn_resolutions=(16,),
                 dropout: float = 0.1, num_groups: int = 32, num_classes: int = 0):
        super().__init__()
        self.channels, self.levels, self.num_res_blocks = channels, len(channel_mults), num_res_blocks
        sides = [padded_size(image_size, self.levels) // 2**i for i in range(self.levels)]
        emb_dim = 4 * channels
        self.time_dense0, self.time_dense1 = dense(channels, emb_dim), dense(emb_dim, emb_dim)
        self.class_embed = None
        if num_classes:  # Flax's default Embed init: N(0, 1 / emb_dim), truncated at 2 sd
            self.class_embed = nn.Embedding(num_classes + 1, emb_dim)
            nn.init.normal_(self.class_embed.weight, 0.0, emb_dim**-0.5)
        block = lambda cin, cout: ResBlock(cin, cout, emb_dim, num_groups, dropout)  # noqa: E731
        attn = lambda ch: AttnBlock(ch, num_groups)  # noqa: E731

        self.conv_in = conv(in_channels, channels, 3)
        ch, skips = channels, [channels]
        for i, mult in enumerate(channel_mults):
            for j in range(num_res_blocks):
                self.add_module(f"down{i}_res{j}", block(ch, channels * mult))
                ch = channels * mult
                if sides[i] in attn_resolutions:
                    self.add_module(f"down{i}_attn{j}", attn(ch))
                skips.append(ch)
            if i != self.levels - 1:
                self.add_module(f"down{i}_downsample", conv(ch, ch, 3, stride=2))
                skips.append(ch)
        self.mid_res0, self.mid_attn, self.mid_res1 = block(ch, ch), attn(ch), block(ch, ch)
        for i, mult in reversed(list(enumerate(channel_mults))):
            for j in range(num_res_blocks + 1):
                self.add_module(f"up{i}_res{j}", block(ch + skips.pop(), channels * mult))
                ch = channels * mult
                if sides[i] in attn_resolutions:
                    self.add_module(f"up{i}_attn{j}", attn(ch))
            if i != 0:
                self.add_module(f"up{i}_upsample", conv(ch, ch, 3))
        self.norm_out, self.conv_out = group_norm(ch, num_groups), conv(ch, out_channels, 3, zero=True)

    def forward(self, x, t, labels=None):
        B, _, H, W = x.shape
        ph, pw = padded_size(H, self.levels) - H, padded_size(W, self.levels) - W
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        emb = timestep_embedding(torch.broadcast_to(torch.as_tensor(t), (B,)), self.channels)
        emb = self.time_dense1(F.silu(self.time_dense0(emb)))
        if self.class_embed is not None:
            emb = emb + self.class_embed(labels)
        m = self._modules
        h = self.conv_in(x)
        skips = [h]
        for i in range(self.levels):
            for j in range(self.num_res_blocks):
                h = m[f"down{i}_res{j}"](h, emb)
                if f"down{i}_attn{j}" in m:
                    h = m[f"down{i}_attn{j}"](h)
                skips.append(h)
            if i != self.levels - 1:
                h = m[f"down{i}_downsample"](F.pad(h, (0, 1, 0, 1)))  # XLA SAME for stride 2: pad (0, 1)
                skips.append(h)
        h = self.mid_res1(self.mid_attn(self.mid_res0(h, emb)), emb)
        for i in reversed(range(self.levels)):
            for j in range(self.num_res_blocks + 1):
                h = m[f"up{i}_res{j}"](torch.cat([h, skips.pop()], dim=1), emb)
                if f"up{i}_attn{j}" in m:
                    h = m[f"up{i}_attn{j}"](h)
            if i != 0:
                h = m[f"up{i}_upsample"](F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[:, :, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]


def from_config(cfg) -> UNet:
    """The reference of `genjax.models.diffusion._net(cfg)` (a diffusion.Config; float32 only)."""
    return UNet(cfg.image_shape[-1], cfg.image_shape[-1], cfg.image_shape[0], cfg.channels, cfg.channel_mults,
                cfg.num_res_blocks, cfg.attn_resolutions, cfg.dropout, cfg.num_groups, cfg.num_classes)


@torch.no_grad()
def load_flax_params(model: UNet, params) -> UNet:
    """Copies genjax's (Flax) U-Net params into `model`: conv kernels HWIO -> OIHW, dense (in, out) ->
    (out, in), GroupNorm scale -> weight. Strict: every parameter on both sides, same shapes."""
    state = {}

    def walk(tree, path):
        for name, value in tree.items():
            if hasattr(value, "items"):
                walk(value, path + [name] if name != "GroupNorm_0" else path)
                continue
            a = np.asarray(value, np.float32)
            if name == "kernel":
                a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
            state[".".join(path + [{"bias": "bias"}.get(name, "weight")])] = torch.from_numpy(a.copy())

    walk(params, [])
    model.load_state_dict(state, strict=True)
    return model


def log_snr(t, schedule: str):
    """genjax.models.diffusion.log_snr in torch."""
    if schedule == "linear":
        b0, b1 = 0.1, 20.0
        lam = -torch.log(torch.expm1(b0 * t + 0.5 * (b1 - b0) * t**2))
    else:
        s = COSINE_S
        u, u0 = (t + s) / (1 + s) * (math.pi / 2), s / (1 + s) * (math.pi / 2)
        lam = torch.log(torch.cos(u) ** 2) - torch.log(torch.sin(t / (1 + s) * (math.pi / 2))
                                                       * torch.sin(u + u0))
    return torch.clamp(lam, min=LOGSNR_MIN)


def make_trainer(model: UNet, *, timesteps: int = 1000, schedule: str = "cosine", prediction: str = "eps",
                 lr: float = 1e-3, warmup: int = 200, steps: int = 5000, weight_decay: float = 0.0,
                 b1: float = 0.9, b2: float = 0.999, grad_clip: float = 1.0, ema_decay: float = 0.999):
    """A train step (images (B, C, H, W) in [0, 1] -> loss float); `step.ema` holds the EMA weights."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=1e-8, weight_decay=weight_decay)
    ema = [p.detach().clone() for p in params]
    state = {"step": 0}

    def step(images):
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], lr, warmup, steps)
        x0 = images * 2.0 - 1.0
        B = x0.shape[0]
        if timesteps:
            t = torch.randint(1, timesteps + 1, (B,)).float() / timesteps
        else:
            t = T_MIN_CONTINUOUS + (1.0 - T_MIN_CONTINUOUS) * torch.rand(B)
        lam = log_snr(t, schedule)
        alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
        sigma = torch.sigmoid(-lam).sqrt()[:, None, None, None]
        noise = torch.randn_like(x0)
        out = model(alpha * x0 + sigma * noise, t)
        target = {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0}[prediction]
        loss = torch.mean(torch.square(out - target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
        if torch.isfinite(loss) and torch.isfinite(norm):  # genjax's guard: a non-finite step changes nothing
            opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - ema_decay)
        state["step"] += 1
        return loss.item()

    step.ema = ema
    return step
