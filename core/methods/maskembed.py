"""MaskEmbed (locality alignment): Covert et al., "Locality Alignment Improves Vision-Language Models", 2024."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..encoders import EncoderConfig, LayerNorm
from ..errors import ConfigError
from ..registry import register_method
from ..teachers import build_teacher
from .base import MIMMethod, MIMOutput


class MaskEmbedDecoder(nn.Module):
    """Zero the masked patch embeddings (and the prefix tokens), add learned positions, a few blocks, predict."""

    def __init__(self, num_prefix_tokens: int, num_patches: int, dim: int, out_dim: int, depth: int = 2,
                 num_heads: int = 12, mlp_ratio: float = 4.0, init_values: float | None = 1e-6):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, num_prefix_tokens + num_patches, dim) * 0.02)
        # LayerScale 1e-6: the decoder starts close to the identity (reference: --decoder-init-values 1e-6)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values,
                                           norm_layer=LayerNorm) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens (M, prefix + N, dim), keep (M, N) with 1 = visible -> predictions (M, prefix + N, out_dim)."""
        keep = F.pad(keep, (self.num_prefix_tokens, 0), value=0.0)  # the reference hides the prefix tokens too
        x = tokens * keep.unsqueeze(-1).to(tokens.dtype) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@register_method("maskembed")
class MaskEmbed(MIMMethod):
    """Post-train a ViT so that masking its patch embeddings mimics masking the image (locality alignment).

    The student encodes the full image; its patch embeddings, masked and passed to a small decoder, must
    predict what the frozen teacher (the original model) outputs for the correspondingly masked image.
    Per image, masks come in threes: a random one, its complement and the empty mask (the full image).
    The student starts as a copy of the teacher (`student_init="teacher"`), or from a weights file.
    Defaults: the reference's ViT-B recipe (github.com/iancovert/locality-alignment, configs/mae-vit-b.yaml,
    scripts/train.py). The reference student soft-caps attention logits at 30 for stability; mimkit's
    encoder does not. `data_mean` / `data_std`: the loader's normalisation (filled in by `pretrain`); the
    teacher converts its input to its own statistics.
    """

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # reference: ViT-B/16
                 mask_ratio: float = 0.5,  # only for mask_sampling="bernoulli" (reference: 0.5)
                 teacher: str | nn.Module = "vit_base_patch16_224",  # reference: a timm ViT-B/16 (MAE, CLIP, ...)
                 teacher_weights: str | None = None, teacher_kwargs: dict | None = None,
                 allow_random_teacher: bool = False,
                 student_init: str = "teacher",  # "teacher" (fork it, as the reference), "random" or a weights file
                 skip_blocks: int = 1,  # reference: the teacher's output before its last block (--skip-blocks 1)
                 decoder_depth: int = 2,  # reference: --decoder-layers 2
                 decoder_embed_dim: int | None = None,  # reference: the teacher's width
                 decoder_num_heads: int | None = None,  # reference: the student's heads
                 decoder_init_values: float = 1e-6,
                 mask_sampling: str = "uniform",  # reference: uniform keep fraction per mask
                 antithetical: bool = True,  # reference: each mask's complement too
                 include_null: bool = True,  # reference: the empty mask too (predict the full-image output)
                 data_mean: list[float] | None = None, data_std: list[float] | None = None):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.teacher = build_teacher(teacher, teacher_weights, img_size=enc.img_size, in_chans=enc.in_chans,
                                     allow_random=allow_random_teacher, model_kwargs=teacher_kwargs,
                                     data_mean=data_mean, data_std=data_std)
        t = self.teacher
        if t.depth is None or t.grid != tuple(enc.grid) or t.num_prefix_tokens != enc.num_prefix_tokens:
            raise ConfigError(f"MaskEmbed needs a ViT teacher with the student's token grid {tuple(enc.grid)} and "
                              f"{enc.num_prefix_tokens} class token; the teacher has grid {t.grid} and "
                              f"{t.num_prefix_tokens} prefix token(s)")
        if not 0 <= skip_blocks < t.depth:
            raise ConfigError(f"skip_blocks must be in 0..{t.depth - 1}, got {skip_blocks}")
        if mask_sampling not in ("uniform", "bernoulli"):
            raise ConfigError(f"mask_sampling must be 'uniform' or 'bernoulli', got {mask_sampling!r}")
        if mask_sampling == "bernoulli" and not 0 < mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.teacher_blocks = t.depth - skip_blocks
        self.mask_sampling, self.mask_ratio = mask_sampling, float(mask_ratio)
        self.antithetical, self.include_null = antithetical, include_null
        self._init_student(student_init)
        dim = decoder_embed_dim or t.embed_dim
        heads = decoder_num_heads or enc.num_heads
        if dim % heads:
            raise ConfigError(f"decoder_embed_dim {dim} must be divisible by decoder_num_heads {heads}")
        # the student's output head starts at zero (reference), so training starts from an uninformative guess
        self.head = nn.Linear(enc.embed_dim, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.decoder = MaskEmbedDecoder(enc.num_prefix_tokens, enc.num_patches, dim, t.embed_dim,
                                        decoder_depth, heads, enc.mlp_ratio, decoder_init_values)
        # 1 / std of the teacher's masked outputs: unit-variance targets (the reference estimates it once before
        # training on held-out data; here from the first batch seen). 0 = not yet estimated.
        self.register_buffer("target_scale", torch.zeros(()))

    def _init_student(self, student_init: str) -> None:
        enc = self.encoder
        if student_init == "random":
            return
        if student_init == "teacher":
            if self.teacher.kind not in ("mimkit", "timm_vit"):
                raise ConfigError("student_init='teacher' copies a plain ViT teacher (mimkit or timm) into the "
                                  f"student; this teacher is {self.teacher.kind}: give student_init=PATH or 'random'")
            source = {k: v for k, v in self.teacher.model.state_dict().items() if not k.startswith("head.")}
            own = enc.state_dict()
            if set(source) != set(own) or any(source[k].shape != own[k].shape for k in own):
                raise ConfigError("student_init='teacher': the teacher's weights do not fit the student (different "
                                  "size or architecture); set the student's size to the teacher's, or give "
                                  "student_init=PATH or 'random'")
            enc.load_state_dict(source, strict=True)
        else:
            from ..checkpoints import load_encoder
            if not Path(student_init).is_file():
                raise ConfigError(f"student_init must be 'teacher', 'random' or a weights file; {student_init!r} "
                                  "is none of these")
            load_encoder(enc, student_init)
        # the reference resets the student's output norm before post-training
        nn.init.ones_(enc.norm.weight)
        nn.init.zeros_(enc.norm.bias)

    def sample_masks(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(batch_size * M, N) keep masks, 1 = visible; per image: random mask[, complement][, all visible]."""
        n = self.encoder.num_patches
        if self.mask_sampling == "uniform":  # keep each patch whose uniform draw exceeds a uniform threshold
            draws = torch.rand(batch_size, n + 1, device=device)
            keep = (draws[:, 1:] > draws[:, :1]).float()
        else:
            keep = (torch.rand(batch_size, n, device=device) >= self.mask_ratio).float()
        group = [keep]
        if self.antithetical:
            group.append(1 - keep)
        if self.include_null:
            group.append(torch.ones_like(keep))
        return torch.stack(group, dim=1).reshape(-1, n)  # image-major: rows b*M .. b*M + M - 1

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        enc = self.encoder
        keep = self.sample_masks(images.shape[0], images.device)
        per_image = keep.shape[0] // images.shape[0]
        # target: the frozen teacher's output for each masked image (masked pixels set to 0 = the data mean)
        pixel_keep = keep.reshape(-1, 1, *enc.grid)
        for axis, patch in enumerate(enc.patch_size):
            pixel_keep = pixel_keep.repeat_interleave(patch, dim=axis + 2)
        masked_images = images.repeat_interleave(per_image, dim=0) * pixel_keep.to(images.dtype)
        target = self.teacher(masked_images, num_blocks=self.teacher_blocks).tokens.float()
        if float(self.target_scale) == 0.0:
            self.target_scale.fill_(1.0 / float(target.std().clamp_min(1e-6)))
        target = target * self.target_scale
        # prediction: the student embeds the unmasked image once; its embeddings are masked in the decoder
        embeddings = self.head(enc.forward_features(images)).repeat_interleave(per_image, dim=0)
        pred = self.decoder(embeddings, keep)
        loss = F.mse_loss(pred.float(), target)
        hidden = 1 - keep.reshape(images.shape[0], per_image, -1)[:, 0]
        return MIMOutput(loss=loss, parts={"embedding": loss.detach()}, mask=hidden)
