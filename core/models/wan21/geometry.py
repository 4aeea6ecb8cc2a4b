"""Wan2.1 I2V geometry: VAE 4x temporal / 8x spatial, (1, 2, 2) patches, 16 noisy latent channels
+ 20 condition channels (4 first-frame mask + 16 first-frame latent), 512 UMT5 text tokens."""

from core.models.base import Geometry

GEOMETRY = Geometry(vae_t=4, vae_s=8, patch=(1, 2, 2), noisy_channels=16, condition_channels=20, text_tokens=512)
