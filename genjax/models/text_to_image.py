"""Text-to-image diffusion (Stable Diffusion's shape from genjax's parts): a bidirectional transformer text
encoder (`genjax.nn.text_encoder`, the transformer family's blocks) whose token states the diffusion
U-Net reads through cross-attention, trained with empty-prompt dropout and sampled with classifier-free
guidance on the text.

    params = text_to_image.init(key, cfg)                  # {'text': encoder params, 'unet': U-Net params}
    tokens = text_to_image.tokenize(["a thick, slanted seven", "7"], cfg)        # int32 (2, max_len + 1)
    loss, metrics = text_to_image.loss(params, {"image": x, "tokens": tokens}, key, cfg)
    images = text_to_image.sample(params, key, 16, cfg, SampleOptions(prompt="seven|a thin one", guidance=3))

Prompts are words of `cfg.vocab` (lowercased; a comma is a word), at most `max_len` of them, encoded as
BOS then one token per word (PAD = 0 after it), so the empty prompt is BOS alone: the unconditional
model. Word tokens, not characters: the caption vocabulary is closed (33 words for the digits), and a
sequence of ~8 tokens instead of ~40 makes the encoder and the cross-attention 4-5x cheaper and saves
the encoder learning to spell.
Training replaces a prompt by the empty one with probability `cond_drop_prob`, so one network gives
eps(x | text) and eps(x).

Guidance follows genjax's class-label convention (`diffusion.guided_model_fn`): out = out_c + w (out_c -
out_u), so w = 0 is the plain conditional model and w = -1 the unconditional one. In the other common
notation out = out_u + s (out_c - out_u), s = w + 1: `--guidance 3` here is s = 4 there.

Diffusion runs in pixel space (images scaled to [-1, 1]) with the diffusion family's schedules,
objective (`diffusion.denoiser_loss`) and samplers; the text is encoded once per sample, outside the
sampler's loop. `evaluate` sums the held-out denoising MSE with each image's prompt and, at the same noise,
with the empty prompt: their gap is what the text tells the denoiser.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from genjax.config import ConfigError, check_at_least, check_choices
from genjax.data.captions import split_words, vocabulary
from genjax.models import diffusion
from genjax.models.diffusion.samplers import guided_fn
from genjax.nn import fast_key, init_params
from genjax.nn.text_encoder import BOS, PAD, TextEncoder
from genjax.nn.unet import UNet, level_resolutions

_D = diffusion.Config()
PROMPT_SEPARATOR = "|"  # SampleOptions.prompt: several prompts, cycled over the samples


@dataclasses.dataclass(frozen=True)
class Config:
    image_shape: tuple[int, ...] = (8, 8, 1)
    # the text encoder: words of `vocab` (space-separated), at most max_len per prompt (plus BOS)
    vocab: str = " ".join(vocabulary()[0])  # the digit captions' words (genjax.data.captions)
    max_len: int = 12
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    # the denoiser (diffusion.Config's fields; cond_drop_prob: the empty-prompt dropout)
    timesteps: int = _D.timesteps
    schedule: Literal["linear", "cosine"] = _D.schedule
    prediction: Literal["eps", "x0", "v"] = _D.prediction
    loss_weighting: Literal["none", "min_snr"] = _D.loss_weighting
    min_snr_gamma: float = _D.min_snr_gamma
    cond_drop_prob: float = 0.1
    clip_denoised: bool = True
    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)
    context_resolutions: tuple[int, ...] = (8, 4)  # feature-map sides with cross-attention to the text
    context_head_dim: int = 16
    dropout: float = 0.0
    num_groups: int = 8
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self):
        check_choices(self, "model")
        check_at_least(self, "model",
                       ("max_len", "text_width", "text_layers", "text_heads", "context_head_dim"))
        words = self.words
        if not words or len(set(words)) != len(words) or words != split_words(self.vocab):
            raise ConfigError(f"model.vocab={self.vocab!r} must be distinct lowercase words separated by "
                              "spaces (a comma a word of its own), e.g. '0 1 , a seven thin'")
        if PROMPT_SEPARATOR in self.vocab:
            raise ConfigError(f"model.vocab must not contain {PROMPT_SEPARATOR!r}: it separates prompts")
        if self.text_width % self.text_heads:
            raise ConfigError(f"model.text_heads={self.text_heads} must divide "
                              f"model.text_width={self.text_width}")
        dcfg = diffusion_config(self)
        dcfg.validate()
        sides = level_resolutions(self.image_shape[0], len(self.channel_mults))
        bad = [r for r in self.context_resolutions if r not in sides]
        if bad or not self.context_resolutions:
            raise ConfigError(f"model.context_resolutions={self.context_resolutions}: give some of this "
                              f"U-Net's feature-map sides {sides} (the text reaches the images only there)")
        widths = [self.channels * m for m, s in zip(self.channel_mults, sides)
                  if s in self.context_resolutions]
        if any(w % self.context_head_dim for w in widths):
            raise ConfigError(f"model.context_head_dim={self.context_head_dim} must divide the widths "
                              f"{widths} of the levels with cross-attention")

    @property
    def words(self) -> list[str]:
        return self.vocab.split()

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 2  # PAD, BOS, then the words


def diffusion_config(cfg: Config) -> diffusion.Config:
    """The denoiser's diffusion.Config (schedule, objective, U-Net; no class labels)."""
    fields = {f.name for f in dataclasses.fields(diffusion.Config)} - {"num_classes"}
    return diffusion.Config(num_classes=0, **{k: getattr(cfg, k) for k in fields})


SIZES = {
    # 8x8 digits: text encoder 2 x 64 wide (0.10M), U-Net widths 16/32 (0.21M), cross-attention at 8x8 and 4x4
    "digits": Config(),
    # 28x28 (captions of MNIST): U-Net levels 28/14/7, self-attention at 14, cross-attention at 14 and 7
    "mnist": Config(image_shape=(28, 28, 1), channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                    attn_resolutions=(14,), context_resolutions=(14, 7), text_width=128, num_groups=32),
}


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    prompt: str = ""  # what to draw; '|' separates prompts cycled over the samples ('' = unconditional)
    guidance: float = 0.0  # w in out_c + w (out_c - out_u): 0 = conditional, -1 = unconditional
    sampler: Literal["ddpm", "ddim", "dpm++2m"] = "dpm++2m"
    steps: int = 20  # network calls; at most model.timesteps
    eta: float = 0.0  # DDIM's noise (0: deterministic)
    spacing: Literal["", "time", "logsnr", "karras"] = ""  # time grid ('': the sampler's default)

    def validate(self, cfg: Config):
        diffusion.SampleOptions(sampler=self.sampler, steps=self.steps, eta=self.eta,
                                spacing=self.spacing).validate(diffusion_config(cfg))
        tokenize(self.prompts(), cfg)

    def prompts(self) -> list[str]:
        return self.prompt.split(PROMPT_SEPARATOR)


# ----------------------------------------------------------------------------- text


def tokenize(prompts, cfg: Config) -> np.ndarray:
    """int32 (N, max_len + 1): BOS, one id per word of each prompt (`split_words`), PAD after. A word
    outside `cfg.vocab` or a prompt of more than `cfg.max_len` words is a one-line ConfigError."""
    ids = {w: i + 2 for i, w in enumerate(cfg.words)}
    out = np.full((len(prompts), cfg.max_len + 1), PAD, np.int32)
    out[:, 0] = BOS
    for row, prompt in enumerate(prompts):
        words = split_words(prompt)
        if len(words) > cfg.max_len:
            raise ConfigError(f"prompt {prompt!r} has {len(words)} words; this model reads at most "
                              f"{cfg.max_len} (model.max_len): shorten it")
        bad = [w for w in words if w not in ids]
        if bad:
            raise ConfigError(f"prompt {prompt!r} has {bad[0]!r}, which is not in the model's vocabulary: "
                              f"use only the words {cfg.vocab!r}")
        out[row, 1:1 + len(words)] = [ids[w] for w in words]
    return out


def empty_tokens(num: int, cfg: Config) -> jax.Array:
    """The empty prompt (BOS alone), (num, max_len + 1): the unconditional model's input."""
    return jnp.zeros((num, cfg.max_len + 1), jnp.int32).at[:, 0].set(BOS)


def drop_prompts(tokens, key, cfg: Config):
    """Classifier-free guidance training: each prompt becomes the empty one with prob cond_drop_prob."""
    drop = jax.random.bernoulli(key, cfg.cond_drop_prob, (tokens.shape[0], 1))
    return jnp.where(drop, empty_tokens(tokens.shape[0], cfg), tokens)


# ----------------------------------------------------------------------------- networks


def _text_net(cfg: Config) -> TextEncoder:
    return TextEncoder(vocab_size=cfg.vocab_size, max_len=cfg.max_len + 1, width=cfg.text_width,
                       layers=cfg.text_layers, heads=cfg.text_heads, dtype=jnp.dtype(cfg.dtype))


def _unet(cfg: Config) -> UNet:
    return UNet(out_channels=cfg.image_shape[-1], channels=cfg.channels, channel_mults=cfg.channel_mults,
                num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions, dropout=cfg.dropout,
                num_groups=cfg.num_groups, context_resolutions=cfg.context_resolutions,
                context_head_dim=cfg.context_head_dim, dtype=jnp.dtype(cfg.dtype))


def init(key: jax.Array, cfg: Config) -> dict:
    """{'text': encoder params, 'unet': U-Net params}, a deterministic function of `key`."""
    cfg.validate()
    k_text, k_unet = jax.random.split(key)
    tokens = empty_tokens(1, cfg)
    states = jnp.zeros((1, cfg.max_len + 1, cfg.text_width), jnp.float32)
    with_text = lambda unet, x, t, states, mask: unet(x, t, None, False, states, mask)  # noqa: E731
    return {"text": init_params(_text_net(cfg), k_text, tokens),
            "unet": init_params(_unet(cfg), k_unet, jnp.zeros((1, *cfg.image_shape), jnp.float32),
                                jnp.zeros((1,)), states, tokens != PAD, method=with_text)}


def encode_text(text_params, tokens, cfg: Config):
    """(token states (B, T, text_width) float32, key mask (B, T) bool) of token ids (B, T)."""
    return _text_net(cfg).apply({"params": text_params}, tokens)


def apply(unet_params, x, t, context, cfg: Config, *, train: bool = False, key=None):
    """The U-Net's output (in `cfg.prediction` form) for x (B, H, W, C), t (B,) and `context` = the
    encoder's (states, mask); `key` feeds dropout when training."""
    rngs = {"dropout": fast_key(key)} if (train and cfg.dropout > 0) else None
    states, mask = context
    return _unet(cfg).apply({"params": unet_params}, x, jnp.broadcast_to(t, x.shape[:1]), None, train,
                            states, mask, rngs=rngs)


# ----------------------------------------------------------------------------- objective


def loss(params, batch, key, cfg: Config, step=None):
    """The diffusion family's weighted denoising MSE, conditioned on the batch's prompts (empty with prob
    cond_drop_prob); gradients reach the U-Net and the text encoder. batch: {'image': (B, H, W, C) in
    [0, 1], 'tokens': (B, max_len + 1) from `tokenize`}."""

    def denoise(xt, t, k_drop, k_dropout):
        tokens = drop_prompts(jnp.asarray(batch["tokens"], jnp.int32), k_drop, cfg)
        context = encode_text(params["text"], tokens, cfg)
        return apply(params["unet"], xt, t, context, cfg, train=True, key=k_dropout)

    x0 = batch["image"].astype(jnp.float32) * 2.0 - 1.0
    return diffusion.denoiser_loss(denoise, x0, key, diffusion_config(cfg))


# ----------------------------------------------------------------------------- sampling


def sample(params, key, num: int, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """`num` images, float32 (num, H, W, C) in [0, 1], for `options.prompt`'s prompts (cycled), in one
    compiled call."""
    options.validate(cfg)
    prompts = options.prompts()
    tokens = tokenize([prompts[i % len(prompts)] for i in range(num)], cfg)
    return sample_tokens(params, key, tokens, cfg, options)


def sample_tokens(params, key, tokens, cfg: Config, options: SampleOptions = SampleOptions()) -> jax.Array:
    """`sample` for prompts already tokenized (N, max_len + 1): one image per row."""
    return _sample(params, key, jnp.asarray(tokens, jnp.int32), jnp.float32(options.guidance), cfg=cfg,
                   sampler=options.sampler, steps=int(options.steps), eta=float(options.eta),
                   spacing=options.spacing or diffusion.default_spacing(options.sampler),
                   guided=bool(options.guidance))


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "steps", "eta", "spacing", "guided"))
def _sample(params, key, tokens, guidance, *, cfg, sampler, steps, eta, spacing, guided):
    dcfg = diffusion_config(cfg)
    num = tokens.shape[0]
    noise_key, loop_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (num, *cfg.image_shape), jnp.float32)
    net = lambda x, t, context: apply(params["unet"], x, t, context, cfg)  # noqa: E731
    context = encode_text(params["text"], tokens, cfg)  # once: the text does not change along the chain
    if guided:
        model_fn = guided_fn(net, context, encode_text(params["text"], empty_tokens(num, cfg), cfg), guidance)
    else:
        model_fn = lambda x, t: net(x, t, context)  # noqa: E731
    clip = 1.0 if cfg.clip_denoised else None
    x0 = diffusion.run_sampler(model_fn, x_T, loop_key, dcfg, sampler=sampler, steps=steps, eta=eta,
                               spacing=spacing, clip=clip)
    return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0).astype(jnp.float32)


# ----------------------------------------------------------------------------- evaluation


def evaluate(params, batch, key, cfg: Config) -> dict:
    """Sums over a held-out batch ({'image', 'tokens'}): the denoising MSE at random noise levels with each
    image's prompt ('mse') and with the empty prompt at the same noise ('mse_empty'), and 'count'."""
    dcfg = diffusion_config(cfg)
    x0 = batch["image"].astype(jnp.float32) * 2.0 - 1.0
    xt, t, _, target = diffusion.noised(x0, *jax.random.split(key), dcfg)
    # one pass over the doubled batch: the prompts, then the empty prompt
    tokens = jnp.concatenate([jnp.asarray(batch["tokens"], jnp.int32), empty_tokens(x0.shape[0], cfg)])
    out = apply(params["unet"], jnp.concatenate([xt, xt]), jnp.concatenate([t, t]),
                encode_text(params["text"], tokens, cfg), cfg)
    cond, empty = jnp.split(jnp.mean(jnp.square(out - jnp.concatenate([target, target])),
                                     axis=tuple(range(1, x0.ndim))), 2)
    return {"mse": jnp.sum(cond), "mse_empty": jnp.sum(empty), "count": x0.shape[0]}
