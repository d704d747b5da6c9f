"""He et al.'s masked autoencoder around a timm ViT encoder, for the zoo's ``mae`` pretraining.

The encoder sees only the unmasked patches (plus the CLS token); a small decoder of timm ``Block`` s
predicts the (by default per-patch normalised) pixels of the masked patches. The encoder keeps its final
``norm``, which the backbone loader maps to ``fc_norm`` for the MAE mean-pool readout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ``VisionTransformer`` encoder (class token, learned absolute positions)."""

    def __init__(self, encoder: Any, *, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mask_ratio: float, norm_pix_loss: bool) -> None:  # fmt: skip
        super().__init__()
        from timm.models.vision_transformer import Block

        if getattr(encoder, "cls_token", None) is None or getattr(encoder, "no_embed_class", False):
            raise ConfigError(
                "arch", "the MAE wrapper expects a ViT with a class token and pos_embed over it"
            )
        if getattr(encoder, "reg_token", None) is not None:
            raise ConfigError("arch", "register tokens are not supported by the MAE wrapper")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        dim = encoder.embed_dim
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.num_patches = int(encoder.patch_embed.num_patches)
        self.decoder_embed = nn.Linear(dim, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, decoder_width))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_width, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, self.patch * self.patch * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def encode_visible(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, ...]:
        enc: Any = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        b, n, _ = x.shape
        x = x + enc.pos_embed[:, 1:]
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(b, n, generator=generator, device="cpu").to(x.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = shuffle[:, :keep]
        x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        x = enc.norm(x)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)  # 1 = masked, in patch order
        return x, restore, mask

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error on the masked patches (per-patch normalised pixels by default)."""
        latent, restore, mask = self.encode_visible(images, generator)
        x = self.decoder_embed(latent)
        b, n = mask.shape
        tokens = x[:, 1:]
        fill = self.mask_token.expand(b, n - tokens.shape[1], -1)
        tokens = torch.cat([tokens, fill], dim=1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1)
