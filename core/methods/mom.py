"""Masked Object Modeling (MoM): Panariello et al., "DistFormer: Enhancing Local and Global Features for
Monocular Per-Object Distance Estimation", arXiv 2401.03191."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torchvision.ops import roi_align

from ..encoders import EncoderConfig, LayerNorm, init_weights
from ..errors import DataError
from ..objects import ObjectFolderData, object_boxes
from ..registry import register_method
from .base import MIMMethod, MIMOutput


def object_masks(num_objects: int, num_tokens: int, ratio: float, device=None) -> torch.Tensor:
    """(M, N) bool, True = masked: exactly int(ratio * N) random tokens of each object (DistFormer's models/mae.py)."""
    num_masked = int(ratio * num_tokens)
    order = torch.rand(num_objects, num_tokens).argsort(1)
    mask = torch.zeros(num_objects, num_tokens, dtype=torch.bool)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask.to(device)


@register_method("mom")
class MaskedObjectModeling(MIMMethod):
    """Per-object distance regression trained together with masked reconstruction of each object's RGB crop.

    The backbone (mimkit's ViT: the transferable encoder) encodes the whole image; each box's features are
    RoI-aligned to a `pool_size` grid of tokens (torchvision `roi_align`), `mask_ratio` of them are hidden, a
    small transformer encodes the visible ones and a decoder predicts the pixels of the object's crop resized to
    `crop_size`, one cell per token (MSE on masked tokens; crops darker than `min_brightness` or boxes smaller
    than `min_box_size` weigh 0). The mean of each object's encoded tokens, after self-attention across the
    objects of its image, regresses the distance (smooth L1). loss = distance + `mom_weight` x MoM.
    The crops are clean [0, 1] pixels (DistFormer's clip_clean): `data_mean` / `data_std`, the loader's normalisation
    (filled in from the data by `pretrain`), are undone first. `mom_weight` 0 turns the MoM branch off: every object
    token visible and no reconstruction, as the official regressor with MAE disabled (mae_regressor.py: encode_only,
    masking_ratio 0).
    Values from github.com/apanariello4/DistFormer (utils/args.py, kitti.sh); DistFormer's backbone is a
    ConvNeXt-FPN and its object transformer PyTorch's post-norm TransformerEncoder: here timm pre-norm Blocks.
    """

    data_class = ObjectFolderData  # `mimkit pretrain --method mom` reads KITTI-layout folders (boxes, distances)

    def __init__(self, encoder: EncoderConfig = EncoderConfig(),  # ViT-B/16 in place of ConvNeXt-FPN (ours)
                 pool_size: int = 8,  # args.py: --pool_size 8 8
                 mask_ratio: float = 0.5,  # args.py / kitti.sh: --mae_masking 0.5
                 object_dim: int = 768,  # args.py: --mae_encoder_dim 768
                 object_depth: int = 6, object_decoder_depth: int = 2,  # kitti.sh: 6 encoder, 2 decoder layers
                 object_num_heads: int = 8,  # models/mae.py: encoder_heads = decoder_heads = 8
                 crop_size: Sequence[int] = (120, 120),  # kitti.sh: --mae_crop_size 120 120
                 mom_weight: float = 20.0,  # kitti.sh: --mae_alpha 20 (nuScenes, MOTSynth: 10)
                 min_brightness: float = 0.01,  # kitti.sh: --mae_min_brightness 1e-2
                 min_box_size: Sequence[int] = (25, 25),  # kitti.sh: --mae_min_bbox_h 25 --mae_min_bbox_w 25
                 data_mean: Sequence[float] | None = None, data_std: Sequence[float] | None = None):
        super().__init__()
        self.encoder = enc = self.build_encoder(encoder)
        self.pool_size, self.mask_ratio = int(pool_size), float(mask_ratio)
        self.crop_size = tuple(int(c) for c in crop_size)
        if any(c % self.pool_size for c in self.crop_size):
            raise DataError(f"crop_size {self.crop_size} must be a multiple of pool_size {self.pool_size}")
        self.cell = tuple(c // self.pool_size for c in self.crop_size)
        num_tokens = self.pool_size ** 2
        # models/mae.py: LayerNorm -> Linear -> LayerNorm token embedding (patch size 1), learned positions
        self.embed = nn.Sequential(nn.LayerNorm(enc.embed_dim), nn.Linear(enc.embed_dim, object_dim),
                                   nn.LayerNorm(object_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, object_dim))
        self.object_encoder = nn.Sequential(*[Block(object_dim, object_num_heads, 4.0, qkv_bias=True,
                                                    norm_layer=LayerNorm) for _ in range(object_depth)])
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, object_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, object_dim))
        self.object_decoder = nn.Sequential(*[Block(object_dim, object_num_heads, 4.0, qkv_bias=True,
                                                    norm_layer=LayerNorm) for _ in range(object_decoder_depth)])
        self.to_pixels = nn.Linear(object_dim, self.cell[0] * self.cell[1] * enc.in_chans)
        # args.py: --mae_global_encoder self_attention across the objects of a frame
        self.objects_attention = nn.TransformerEncoderLayer(object_dim, object_num_heads, 4 * object_dim,
                                                            dropout=0.0, batch_first=True, norm_first=True)
        self.distance_head = nn.Linear(object_dim, 1)
        for module in (self.embed, self.object_encoder, self.object_decoder, self.to_pixels, self.distance_head):
            module.apply(init_weights)
        for p in (self.pos_embed, self.decoder_pos_embed, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        self.mom_weight, self.min_brightness = float(mom_weight), float(min_brightness)
        self.min_box_size = tuple(float(v) for v in min_box_size)
        if (data_mean is None) != (data_std is None):
            raise DataError("mom: give both data_mean and data_std (the loader's normalisation), or neither")
        channels = enc.in_chans
        stats = [torch.zeros(channels), torch.ones(channels)] if data_mean is None else \
            [torch.as_tensor(data_mean, dtype=torch.float32), torch.as_tensor(data_std, dtype=torch.float32)]
        if any(s.numel() != channels for s in stats):
            raise DataError(f"mom: data_mean and data_std need {channels} values (one per channel), "
                            f"got {stats[0].numel()} and {stats[1].numel()}")
        # not in the state dict: the run's config rebuilds them
        self.register_buffer("data_mean", stats[0].view(1, -1, 1, 1), persistent=False)
        self.register_buffer("data_std", stats[1].view(1, -1, 1, 1), persistent=False)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.forward_features(images)[:, enc.num_prefix_tokens:]
        grid = tuple(s // p for s, p in zip(images.shape[-2:], enc.patch_size))
        return tokens.transpose(1, 2).reshape(images.shape[0], enc.embed_dim, *grid)

    def object_tokens(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(M, pool^2, object_dim) embedded tokens of every box of the batch, image by image."""
        features = self.feature_map(images)
        rois = roi_align(features, [b.to(features) for b in boxes], output_size=self.pool_size,
                         spatial_scale=1.0 / self.encoder.patch_size[0], sampling_ratio=2, aligned=True)
        return self.embed(rois.flatten(2).transpose(1, 2)) + self.pos_embed

    def object_crops(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(M, C, *crop_size) clean [0, 1] pixels of every box, resized (the reconstruction target)."""
        pixels = images * self.data_std.to(images) + self.data_mean.to(images)
        return roi_align(pixels, [b.to(images) for b in boxes], output_size=self.crop_size, sampling_ratio=2,
                         aligned=True)

    def object_weights(self, crops: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """1 per object, 0 for dark crops (mean over pixels of the channel maximum) or boxes below the size."""
        dark = crops.amax(1).mean((1, 2)) < self.min_brightness
        h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
        small = (h < self.min_box_size[0]) | (w < self.min_box_size[1])
        return (~(dark | small)).float()

    def forward(self, batch: dict, step: int | None = None) -> MIMOutput:
        images = self.images(batch)
        boxes, distances = object_boxes(batch)
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            raise DataError("the batch holds no object boxes; MoM needs at least one per batch")
        tokens = self.object_tokens(images, boxes)
        m, n, d = tokens.shape
        if self.mom_weight == 0:  # the MoM branch off: the distance from every object token
            if distances is None:
                raise DataError("mom with mom_weight 0 trains the distance alone: the batch needs per-object "
                                f"'distances'; got keys {sorted(batch)}")
            predicted = self.distances(self.object_encoder(tokens), counts)
            distance = F.smooth_l1_loss(predicted.float(), torch.cat([t.to(predicted) for t in distances]).float())
            return MIMOutput(loss=distance, parts={"distance": distance.detach()})
        mask = object_masks(m, n, self.mask_ratio, tokens.device)
        visible = tokens[~mask].reshape(m, n - int(self.mask_ratio * n), d)
        encoded = self.object_encoder(visible)
        # reconstruction: mask tokens back in place, decode, predict each token's cell of the resized crop
        full = self.mask_token.expand(m, n, d).clone()
        full[~mask] = encoded.reshape(-1, d)
        pred = self.to_pixels(self.object_decoder(full + self.decoder_pos_embed))
        all_boxes = torch.cat([b.to(images) for b in boxes])
        crops = self.object_crops(images, boxes)
        c = images.shape[1]
        target = crops.reshape(m, c, self.pool_size, self.cell[0], self.pool_size, self.cell[1])
        target = target.permute(0, 2, 4, 3, 5, 1).reshape(m, n, -1)
        weights = self.object_weights(crops, all_boxes)
        per_token = ((pred.float() - target.float()) ** 2).mean(-1)
        masked_weights = mask.float() * weights[:, None]
        mom = (per_token * masked_weights).sum() / (masked_weights.sum() + 1e-6)
        predicted = self.distances(encoded, counts)
        parts = {"mom": mom.detach()}
        loss = self.mom_weight * mom
        if distances is not None:
            distance = F.smooth_l1_loss(predicted.float(), torch.cat([t.to(predicted) for t in distances]).float())
            loss = loss + distance
            parts["distance"] = distance.detach()
        return MIMOutput(loss=loss, parts=parts, pred=pred, mask=mask.float())

    def distances(self, encoded: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(M,) distances: mean of each object's encoded tokens, self-attention across the objects of its image."""
        padded = nn.utils.rnn.pad_sequence(list(encoded.mean(1).split(counts)), batch_first=True)
        slots = torch.arange(padded.shape[1], device=padded.device)[None]
        padding = slots >= torch.tensor(counts, device=padded.device)[:, None]
        attended = self.objects_attention(padded, src_key_padding_mask=padding)[~padding]
        return self.distance_head(attended).squeeze(-1)

    @torch.no_grad()
    def predict_distances(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each box's distance with every object token visible (inference)."""
        counts = [len(b) for b in boxes]
        return list(self.distances(self.object_encoder(self.object_tokens(images, boxes)), counts).split(counts))
