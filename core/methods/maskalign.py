"""MaskAlign: Xue et al., "Stare at What You See: Masked Image Modeling without Reconstruction", CVPR 2023."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import EncoderConfig, gather_tokens, init_weights
from ..errors import ConfigError
from ..masking import RandomMasker, RatioSchedule
from ..registry import register_method
from ..teachers import AttentionMasker, build_teacher
from .base import MIMMethod, MIMOutput


@register_method("maskalign")
class MaskAlign(MIMMethod):
    """Match the student's visible-token features to a frozen teacher's features of the intact image; no decoder.

    The student encodes only the visible tokens. Dynamic Alignment, a learnable matrix (identity plus 0.01)
    mixes the student's block outputs; one linear head per aligned layer maps each mix to the teacher's
    width, and a smooth-L1 loss matches it to the teacher's whitened hidden state of the same layer at the
    class token and the visible positions, over the teacher's last `aligned_layers` blocks. The visible
    tokens are drawn from the teacher's class-token attention (attention-guided masking) or at random.
    Defaults: the README's ViT-B recipe (github.com/OpenDriveLab/maskalign) with a CLIP ViT-B/16 teacher.
    `data_mean` / `data_std` are the loader's normalisation (filled in from the data by `pretrain`): the teacher
    converts its input to its own statistics, as the official `forward_clip` converts ImageNet to CLIP's.
    """

    def __init__(self, encoder: EncoderConfig = EncoderConfig(drop_path_rate=0.1),  # README: ViT-B, --drop_path 0.1
                 mask_ratio: float | RatioSchedule = 0.7,  # README: --mask_ratio 0.7
                 teacher: str | nn.Module = "open_clip:ViT-B-16-quickgelu",  # README: openai/clip-vit-base-patch16
                 teacher_weights: str | None = None, teacher_img_size: int | None = None,
                 teacher_kwargs: dict | None = None, allow_random_teacher: bool = False,
                 aligned_layers: int = 5,  # README: --loss_weights top5
                 attention_masking: bool = True,  # README: --mask_type attention
                 alignment_init: float = 0.01,  # models_pretrain.py: eye(depth) + 0.01
                 data_mean: list[float] | None = None, data_std: list[float] | None = None):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.teacher = build_teacher(teacher, teacher_weights, img_size=teacher_img_size or enc.img_size,
                                     in_chans=enc.in_chans, allow_random=allow_random_teacher,
                                     model_kwargs=teacher_kwargs, data_mean=data_mean, data_std=data_std)
        t = self.teacher
        if t.depth is None:
            raise ConfigError("MaskAlign aligns per-layer hidden states: its teacher must be a ViT")
        if t.grid != tuple(enc.grid):
            raise ConfigError(f"the teacher's token grid {t.grid} differs from the student's {tuple(enc.grid)}; "
                              f"set teacher_img_size so that they match (e.g. 196 for a /14 teacher and a /16 "
                              f"student at 224)")
        if not 1 <= aligned_layers <= min(t.depth, enc.depth):
            raise ConfigError(f"aligned_layers must be in 1..{min(t.depth, enc.depth)}, got {aligned_layers}")
        self.attention_masking = attention_masking
        self.masker = AttentionMasker(mask_ratio) if attention_masking else RandomMasker(mask_ratio)
        # the teacher's last `aligned_layers` blocks (1-based), each paired with the student block at the same depth
        self.teacher_layers = list(range(t.depth - aligned_layers + 1, t.depth + 1))
        student_layers = [max(1, round(layer * enc.depth / t.depth)) for layer in self.teacher_layers]
        # Dynamic Alignment: row i mixes all student blocks for aligned layer i; identity plus a small constant
        init = torch.full((aligned_layers, enc.depth), float(alignment_init))
        init[torch.arange(aligned_layers), torch.tensor(student_layers) - 1] += 1.0
        self.alignment = nn.Parameter(init)
        self.heads = nn.ModuleList([nn.Linear(enc.embed_dim, t.embed_dim) for _ in self.teacher_layers])
        self.heads.apply(init_weights)
        # the class token is matched when both models have one (the reference matches [CLS] + visible tokens)
        self.matched_prefix = min(1, enc.num_prefix_tokens, t.num_prefix_tokens)

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        enc = self.encoder
        teacher = self.teacher(images, layers=self.teacher_layers, cls_attention=self.attention_masking)
        mask = self.masker(images.shape[0], enc.num_patches, step=step, scores=teacher.cls_attention,
                           device=images.device)
        _, hidden = enc.forward_visible(images, mask.ids_keep, return_layers=range(1, enc.depth + 1))
        mixed = torch.einsum("ls,sbtd->lbtd", self.alignment.to(hidden[0].dtype), torch.stack(hidden))
        loss = 0.0
        for head, student, target in zip(self.heads, mixed, teacher.hidden):
            pred = head(self._visible(student, None, enc.num_prefix_tokens))
            # "whiten": per-token layer norm without affine parameters
            target = self._visible(F.layer_norm(target.float(), target.shape[-1:]), mask.ids_keep,
                                   self.teacher.num_prefix_tokens)
            # reference: 2 x smooth L1 (beta 1) per layer, layers weighted equally ("top5": 1/5 each)
            loss = loss + 2 * F.smooth_l1_loss(pred.float(), target) / len(self.heads)
        return MIMOutput(loss=loss, parts={"alignment": loss.detach()}, mask=mask.mask)

    def _visible(self, tokens: torch.Tensor, ids_keep: torch.Tensor | None, prefix: int) -> torch.Tensor:
        """[class token] + patch tokens (gathered at `ids_keep` when the tokens cover every patch)."""
        patches = tokens[:, prefix:]
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        return torch.cat([tokens[:, :self.matched_prefix], patches], dim=1)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The reference leaves the Dynamic Alignment matrix out of weight decay (main_pretrain.py skip_list)."""
        return {"alignment"}
