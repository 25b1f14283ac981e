"""Thorax MAE: Xiao et al., "Delving into Masked Autoencoders for Multi-Label Thorax Disease Classification",
WACV 2023 (official code: lambert-x/medical_mae).

The method is MAE; what the paper contributes is its chest X-ray recipe: a 90% mask ratio, crops of 50-100%
of the radiograph, a small 2-block decoder, and a fine-tuning recipe with strong layer-wise lr decay. The
data and fine-tuning settings live in medical/recipes/thorax_mae_pretrain.yaml and thorax_mae_finetune.yaml.
"""
from __future__ import annotations

from mimkit.core.encoders import EncoderConfig
from mimkit.core.masking import RatioSchedule
from mimkit.core.methods.mae import MAE
from mimkit.core.registry import register_method


@register_method("thorax_mae")
class ThoraxMAE(MAE):
    """MAE with the chest X-ray pretraining defaults of Xiao et al. (ViT-S/16, mask 90%, 512 x 2 decoder)."""

    def __init__(self,
                 # PRETRAIN.md: --model mae_vit_small_patch16_dec512d2b (ViT-S/16, decoder 512 wide, 2 blocks);
                 # official code: radiographs loaded as RGB with 3-channel normalisation (in_chans 3)
                 encoder: EncoderConfig = EncoderConfig(embed_dim=384, depth=12, num_heads=6),
                 decoder_embed_dim: int = 512, decoder_depth: int = 2, decoder_num_heads: int = 16,
                 mask_ratio: float | RatioSchedule = 0.9,  # PRETRAIN.md: --mask_ratio 0.90
                 norm_pix_loss: bool = False):  # PRETRAIN.md passes no --norm_pix_loss: raw-pixel target
        super().__init__(encoder=encoder, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                         decoder_num_heads=decoder_num_heads, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)
