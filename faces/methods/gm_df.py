"""GM-DF: Lai et al., "GM-DF: Generalized Multi-Scenario Deepfake Detection", arXiv 2406.20078 (2024).

A CLIP image encoder (open_clip's ViT-B/16 architecture), frozen, with four trained additions from the paper:
hybrid experts (mixture-of-experts adapters beside each block's MLP, chosen by a router), CLIP text alignment of
the image feature with learned prompt context and the words of its domain and class, a masked image reconstruction
branch (50% of the patches masked, a small MAE decoder), and domain-aware meta-learning with a domain alignment
loss between the meta-test and meta-train feature distributions.

No official code exists and the paper's full text could not be read here (only its abstract), so every choice
below that the issue does not state is ours:
- experts: `num_experts` = 4 bottleneck adapters (Linear d->`adapter_dim`=64, GELU, Linear back, zero-initialised
  so the frozen CLIP features start unchanged) in every block, added to the MLP's output from the same LayerNorm
  input; the router is one linear layer on the mean of the block's input tokens, so each *sample* takes its
  top-`top_k`=2 experts, weighted by their router probabilities (Switch Transformer's gate, which keeps the router
  trainable), with Switch's load-balancing loss (weight 0.01) so that all experts stay in use;
- text: CoOp-style prompts "X X X X X X X X a {class} face from {domain}." where the 8 X embeddings are learned
  context shared by all prompts; one prompt per (domain, class); logits are CLIP's scaled cosine similarities
  (the checkpoint's logit scale, or 1/0.07 without one); the class score marginalises the domains (log-sum-exp),
  the text alignment loss is the cross-entropy over all (domain, class) prompts when the domain is known;
- reconstruction: normalised-pixel MSE on the masked patches (MAE's target), MAE decoder of width 256, depth 2;
- meta-learning: in each training batch with labels from two or more domains, the domains present are shuffled
  and split into meta-test (a third, at least one) and meta-train (the rest, at least one); the inner step is one
  SGD step (lr 1e-3) on the meta-train loss, first order (the outer gradient at the updated weights is applied to
  the weights as it is, FOMAML: torch's fused attention has no second derivative); the outer loss is the
  meta-test loss at the updated weights; total = meta-train loss + meta-test loss + 0.1 x domain
  alignment;
- domain alignment distance: the squared maximum mean discrepancy (MMD) with a sum of Gaussian kernels at
  squared widths 1/16..16 x 1 (DAN's multi-kernel MMD, Long et al. 2015, with fixed widths for the unit-norm
  features instead of DAN's median heuristic, whose gradient grows as 1 / the features' spread) between the meta-test
  features (at the updated weights) and the meta-train features (held fixed: the meta-test distribution is pulled
  toward the meta-train one). MMD is zero for identical sets and grows with any shift of the mean or of the
  spread; CORAL sees only covariances (blind to a mean shift) and a Frechet distance needs a matrix square root
  that is unstable for the few samples of one episode;
- without labels (the `pretrain` command) the loss is the reconstruction branch alone (plus load balancing).

A named departure, off by default: `unfreeze_last_blocks` = N also trains the encoder's last N blocks and its final
LayerNorm (the patch embedding, positions, class token, pre-norm, earlier blocks, text tower and projection stay
frozen). It is for runs without CLIP weights (no package ships any): a frozen *random* or briefly pretrained tower
carries no forgery signal for the additions to route, so `mimkit-faces demo` and its numbers use it, and say so.
The features aligned and classified are the class token after CLIP's final LayerNorm and projection, normalised.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.core.decoders import MAEDecoder
from mimkit.core.encoders import EncoderConfig, ViTEncoder, init_weights, run_blocks
from mimkit.core.errors import CheckpointError, ConfigError, DataError
from mimkit.core.masking import RandomMasker
from mimkit.core.methods.base import MIMMethod, MIMOutput
from mimkit.core.registry import register_method
from mimkit.core.targets import PixelTarget, masked_mse

log = logging.getLogger("mimkit")

CLASSES = ("real", "fake")
# the five datasets of GM-DF's multi-dataset benchmark, as the domain words of the prompts (ours: their usual names)
DEFAULT_DOMAINS = ("FaceForensics++", "Celeb-DF", "DFDC", "WildDeepfake", "DFD")
CLIP_LAYER_NORM = partial(nn.LayerNorm, eps=1e-5)  # CLIP's LayerNorm epsilon


# ============================================================================================ hybrid experts
class ExpertAdapter(nn.Module):
    """One expert: a bottleneck adapter (down, GELU, up), its up-projection zero so it starts as a no-op."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down, self.act, self.up = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def reset(self) -> None:
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class HybridExpertBlock(Block):
    """A CLIP (timm) block with routed expert adapters beside its MLP; each sample runs only its top-k experts."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_experts: int, top_k: int, adapter_dim: int,
                 **block_options):
        super().__init__(dim, num_heads, mlp_ratio, **block_options)
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList([ExpertAdapter(dim, adapter_dim) for _ in range(num_experts)])
        self.top_k = top_k
        self.last_route: torch.Tensor | None = None      # (B, top_k) experts each sample took
        self.balance: torch.Tensor | None = None         # Switch load-balancing loss of the last call

    def expert_output(self, h: torch.Tensor) -> torch.Tensor:
        probs = self.router(h.mean(1)).softmax(-1)                       # (B, E): one routing per sample
        gates, route = probs.topk(self.top_k, dim=-1)
        self.last_route = route.detach()
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            chosen = route == e
            rows = chosen.any(1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue  # an expert no sample chose is not run, so it gets no gradient
            gate = (gates * chosen).sum(1)[rows]
            out = out.index_add(0, rows, gate[:, None, None] * expert(h[rows]))
        num_experts = len(self.experts)
        load = F.one_hot(route, num_experts).float().sum(1).mean(0) / self.top_k
        self.balance = num_experts * (load * probs.mean(0)).sum()
        return out

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h))) + self.expert_output(h)


class CLIPViTEncoder(ViTEncoder):
    """open_clip's ViT image tower (LayerNorm before the blocks, eps 1e-5, learned positions) as a mimkit encoder,
    with hybrid-expert blocks; its keys are timm's CLIP ViT keys (`norm_pre`) plus the routers and experts."""

    def __init__(self, *args, num_experts: int = 4, top_k: int = 2, adapter_dim: int = 64, quick_gelu: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        act = QuickGELU if quick_gelu else nn.GELU  # OpenAI's CLIP weights use QuickGELU; open_clip's own, GELU
        dpr = [float(v) for v in torch.linspace(0, kwargs.get("drop_path_rate", 0.0), self.depth)]
        self.blocks = nn.ModuleList([
            HybridExpertBlock(self.embed_dim, self.num_heads, self.mlp_ratio, num_experts, top_k, adapter_dim,
                              qkv_bias=kwargs.get("qkv_bias", True), drop_path=dpr[i], act_layer=act,
                              norm_layer=CLIP_LAYER_NORM) for i in range(self.depth)])
        self.norm_pre, self.norm = CLIP_LAYER_NORM(self.embed_dim), CLIP_LAYER_NORM(self.embed_dim)
        self.blocks.apply(init_weights)
        for block in self.blocks:
            for expert in block.experts:
                expert.reset()

    def forward_tokens(self, tokens: torch.Tensor, return_layers: Sequence[int] | None = None):
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return run_blocks(self.blocks, self.norm, self.norm_pre(tokens), return_layers)

    def balance_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the blocks' routers in the last forward pass."""
        values = [b.balance for b in self.blocks if b.balance is not None]
        return torch.stack(values).mean() if values else self.pos_embed.new_zeros(())


# ============================================================================================ text side
class PromptLearner(nn.Module):
    """CoOp prompts: learned context embeddings in front of "a {class} face from {domain}.", one per pair."""

    def __init__(self, domains: Sequence[str], context_length: int, width: int, num_context: int = 8):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer(context_length=context_length)
        texts = [" ".join(["X"] * num_context) + f" a {name} face from {domain}." for domain in domains
                 for name in CLASSES]
        tokens = tokenizer(texts)
        if (tokens.argmax(-1) >= context_length - 1).any():
            raise ConfigError(f"context_length {context_length} is too short for the prompts (e.g. {texts[0]!r})")
        self.register_buffer("tokens", tokens, persistent=False)  # (domains x classes, L), rebuilt from the config
        self.num_context = num_context
        self.context = nn.Parameter(torch.randn(num_context, width) * 0.02)

    def forward(self, text: nn.Module) -> torch.Tensor:
        """Text features (P, D) of every prompt through an open_clip text tower, the context spliced in."""
        x = text.token_embedding(self.tokens)
        ctx = self.context.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.num_context:]], dim=1)
        x = x + text.positional_embedding[:x.shape[1]]
        x = text.transformer(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.tokens.argmax(-1)]  # the end-of-text token
        return pooled @ text.text_projection


# ============================================================================================ losses
# unit-norm features: squared distances lie in [0, 4], so fixed kernel widths cover them. The median heuristic scales
# the kernels with the features' spread, so its gradient grows as 1 / spread: with the nearly collapsed features of a
# fresh (or CLIP-less) tower it outweighed the classification loss, which then never left ln 2 (measured, issue 9)
ALIGNMENT_BANDWIDTH = 1.0


def mmd(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        bandwidth: float | None = None) -> torch.Tensor:
    """Squared multi-kernel MMD between feature sets x (n, d) and y (m, d) (biased estimate, Gaussian kernels at
    `scales` x `bandwidth`, a squared distance; None: the median squared pairwise distance of the pooled set, DAN's
    heuristic); 0 when the sets are identical."""
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        bandwidth = d2.detach()[d2.detach() > 0].median() if (d2.detach() > 0).any() else d2.new_tensor(1.0)
    kernel = sum(torch.exp(-d2 / (2 * s * s * bandwidth)) for s in scales)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def split_domains(domains: torch.Tensor, test_fraction: float = 1 / 3,
                  generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """A meta-learning episode: the distinct domains present, shuffled, split into disjoint (meta-train,
    meta-test) lists, each non-empty; empty meta-test when fewer than two domains are present."""
    present = torch.unique(domains).tolist()
    if len(present) < 2:
        return present, []
    order = torch.randperm(len(present), generator=generator).tolist()
    shuffled = [present[i] for i in order]
    count = min(len(present) - 1, max(1, round(test_fraction * len(present))))
    return sorted(shuffled[count:]), sorted(shuffled[:count])


# ============================================================================================ the method
@register_method("gm_df")
class GMDF(MIMMethod):
    """Frozen CLIP ViT + hybrid experts + prompt-aligned text + masked reconstruction + domain meta-learning
    (GM-DF, arXiv 2406.20078)."""

    def __init__(self,
                 encoder: EncoderConfig = EncoderConfig(img_size=224, patch_size=16, embed_dim=768, depth=12,
                                                        num_heads=12, pos_embed="learned"),  # open_clip ViT-B/16
                 domains: Sequence[str] | None = None,  # None: the five datasets of GM-DF's benchmark
                 clip_weights: str | None = None,
                 quick_gelu: bool = False,
                 freeze_encoder: bool = True,            # paper: CLIP frozen, only the additions learn
                 unfreeze_last_blocks: int = 0,          # departure (not the paper's): the last N blocks learn too
                 num_experts: int = 4, top_k: int = 2, adapter_dim: int = 64,
                 text_width: int = 512, text_depth: int = 12, text_heads: int = 8,  # open_clip ViT-B-16 text tower
                 context_length: int = 77, text_embed_dim: int = 512,
                 num_context: int = 8,
                 mask_ratio: float = 0.5,                # issue: 50% masking
                 decoder_embed_dim: int = 256, decoder_depth: int = 2, decoder_num_heads: int = 8,
                 norm_pix_loss: bool = True,
                 text_weight: float = 1.0, reconstruction_weight: float = 1.0, balance_weight: float = 0.01,
                 meta_learning: bool = True, inner_lr: float = 1e-3, meta_test_fraction: float = 1 / 3,
                 alignment_weight: float = 0.1):
        super().__init__()
        from open_clip.transformer import TextTransformer

        self.domains = list(DEFAULT_DOMAINS if domains is None else domains)
        if not self.domains:
            raise ConfigError("gm_df: domains must name at least one training domain")
        self.encoder = enc = self.build_encoder(encoder, CLIPViTEncoder, num_experts=num_experts, top_k=top_k,
                                                adapter_dim=adapter_dim, quick_gelu=quick_gelu)
        self.image_projection = nn.Linear(enc.embed_dim, text_embed_dim, bias=False)  # CLIP's visual.proj
        nn.init.normal_(self.image_projection.weight, std=enc.embed_dim ** -0.5)
        self.text = TextTransformer(context_length=context_length, width=text_width, heads=text_heads,
                                    layers=text_depth, output_dim=text_embed_dim,
                                    act_layer=QuickGELU if quick_gelu else nn.GELU)
        self.register_buffer("logit_scale", torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.prompts = PromptLearner(self.domains, context_length, text_width, num_context)
        self.masker = RandomMasker(mask_ratio)
        self.target = PixelTarget(enc.patch_size, normalize=norm_pix_loss)
        self.decoder = MAEDecoder(enc.grid, enc.embed_dim, math.prod(enc.patch_size) * enc.in_chans,
                                  decoder_embed_dim, decoder_depth, decoder_num_heads, enc.mlp_ratio,
                                  num_prefix_tokens=enc.num_prefix_tokens)
        self.weights = dict(text=text_weight, reconstruction=reconstruction_weight, balance=balance_weight,
                            alignment=alignment_weight)
        self.meta_learning, self.inner_lr = meta_learning, inner_lr
        self.meta_test_fraction = meta_test_fraction
        self.last_episode: tuple[list[int], list[int]] | None = None
        # said at the first training step if no weights came by then (CLIP's here, or a run's loaded after building)
        self._random_towers = not clip_weights
        if clip_weights:
            self.load_clip(clip_weights)
        if not 0 <= unfreeze_last_blocks <= enc.depth:
            raise ConfigError(f"gm_df: unfreeze_last_blocks must lie in 0..{enc.depth} (the encoder's depth), "
                              f"got {unfreeze_last_blocks}")
        self.unfreeze_last_blocks = unfreeze_last_blocks
        self.freeze(freeze_encoder, unfreeze_last_blocks)

    # ------------------------------------------------------------------ weights
    def freeze(self, freeze_encoder: bool, unfreeze_last_blocks: int = 0) -> None:
        """CLIP's weights stay fixed: the text tower and projection always, the encoder (but its routers and
        experts) when `freeze_encoder`, except its last `unfreeze_last_blocks` blocks and final norm (departure)."""
        self.text.requires_grad_(False)
        self.image_projection.requires_grad_(False)
        depth = len(self.encoder.blocks)
        unfrozen = tuple(f"blocks.{i}." for i in range(depth - unfreeze_last_blocks, depth))
        unfrozen += ("norm.",) if unfreeze_last_blocks else ()
        for name, parameter in self.encoder.named_parameters():
            trained = ".experts." in name or ".router." in name or name.startswith(unfrozen)
            parameter.requires_grad_(trained or (not freeze_encoder and not (name == "pos_embed"
                                                                              and self.encoder.fixed_pos)))

    def load_clip(self, path: str) -> None:
        """Load a local open_clip / OpenAI CLIP checkpoint (visual.*, token_embedding, transformer.*, ...)."""
        from timm.models.vision_transformer import _convert_openai_clip

        from mimkit.core.checkpoints import _torch_load

        from pathlib import Path
        file = Path(path)
        if not file.is_file():
            raise CheckpointError(f"clip_weights {file} does not exist")
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(file))
        else:
            state = _torch_load(file)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if "visual.class_embedding" not in state:
            raise CheckpointError(f"clip_weights {file}: not an open_clip ViT checkpoint (no visual.class_embedding; "
                                  f"first keys {list(state)[:5]})")
        visual = _convert_openai_clip(state, None)
        self.image_projection.weight.data.copy_(visual.pop("head.weight"))
        visual.pop("head.bias", None)
        if "patch_embed.proj.bias" not in visual:  # CLIP's patch projection has no bias
            visual["patch_embed.proj.bias"] = torch.zeros_like(self.encoder.patch_embed.proj.bias)
        try:
            missing, unexpected = self.encoder.load_state_dict(visual, strict=False)
            text = {k: v for k, v in state.items() if k.split(".")[0] in
                    ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")}
            missing_text, unexpected_text = self.text.load_state_dict(text, strict=False)
        except RuntimeError as error:
            raise CheckpointError(f"clip_weights {file} does not fit this model's shape: "
                                  f"{str(error).splitlines()[1].strip()}") from None
        missing = [k for k in missing if ".experts." not in k and ".router." not in k]
        if missing or unexpected or missing_text or unexpected_text:
            raise CheckpointError(f"clip_weights {file}: missing {missing + missing_text}, unexpected "
                                  f"{unexpected + unexpected_text}")
        if "logit_scale" in state:
            self.logit_scale.copy_(state["logit_scale"])
        log.info("gm_df: CLIP weights loaded from %s", file)

    # ------------------------------------------------------------------ parts
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP image embeddings (B, D) of the whole images."""
        tokens = self.encoder.forward_features(images)
        return F.normalize(self.image_projection(tokens[:, 0]), dim=-1)

    def prompt_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (B, domains, classes) to every prompt."""
        text = F.normalize(self.prompts(self.text), dim=-1)
        return (self.logit_scale.exp() * features @ text.T).view(-1, len(self.domains), len(CLASSES))

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """Probability (B,) that each face is fake."""
        logits = self.prompt_logits(self.image_features(images))
        return torch.logsumexp(logits, 1).softmax(-1)[:, 1]

    def reconstruction(self, images: torch.Tensor, step: int | None = None):
        mask = self.masker(images.shape[0], self.encoder.num_patches, step=step, device=images.device)
        pred = self.decoder(self.encoder.forward_visible(images, mask.ids_keep), mask.ids_restore)
        return masked_mse(pred, self.target(images), mask.mask), pred, mask.mask

    def losses(self, batch: dict, step: int | None = None) -> tuple[torch.Tensor, dict, torch.Tensor | None, dict]:
        """(loss, parts, features, reconstruction) of a batch without meta-learning."""
        images = self.images(batch)
        rec, pred, mask = self.reconstruction(images, step)
        balance = self.encoder.balance_loss()
        parts = {"reconstruction": rec, "balance": balance}
        loss = self.weights["reconstruction"] * rec + self.weights["balance"] * balance
        features = None
        if batch.get("label") is not None:
            labels = torch.as_tensor(batch["label"], device=images.device).long()
            features = self.image_features(images)
            loss = loss + self.weights["balance"] * self.encoder.balance_loss()  # the routers of the whole view
            logits = self.prompt_logits(features)
            parts["classification"] = F.cross_entropy(torch.logsumexp(logits, 1), labels)
            loss = loss + parts["classification"]
            if batch.get("domain") is not None:
                domains = torch.as_tensor(batch["domain"], device=images.device).long()
                if domains.min() < 0 or domains.max() >= len(self.domains):
                    raise DataError(f"gm_df: batch domain indices must lie in 0..{len(self.domains) - 1} "
                                    f"(domains {self.domains}); found {domains.unique().tolist()}")
                parts["text"] = F.cross_entropy(logits.flatten(1), domains * len(CLASSES) + labels)
                loss = loss + self.weights["text"] * parts["text"]
        return loss, parts, features, {"pred": pred, "mask": mask}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict, step: int | None = None, episode: bool = True) -> MIMOutput:
        domains = batch.get("domain")
        if not (episode and self.training and self.meta_learning and batch.get("label") is not None
                and domains is not None):
            loss, parts, _, rec = self.losses(batch, step)
            return MIMOutput(loss=loss, parts={k: v.detach() for k, v in parts.items()}, **rec)
        domains = torch.as_tensor(domains, device=batch["image"].device).long()
        meta_train, meta_test = split_domains(domains, self.meta_test_fraction)
        self.last_episode = (meta_train, meta_test)
        if not meta_test:  # a single domain in the batch: no episode
            loss, parts, _, rec = self.losses(batch, step)
            return MIMOutput(loss=loss, parts={k: v.detach() for k, v in parts.items()}, **rec)
        in_test = torch.isin(domains, torch.tensor(meta_test, device=domains.device))
        train_batch, test_batch = _subset(batch, ~in_test), _subset(batch, in_test)
        train_loss, train_parts, train_features, _ = self.losses(train_batch, step)
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(train_loss, list(params.values()), retain_graph=True, allow_unused=True)
        fast = {n: p - self.inner_lr * g if g is not None else p for (n, p), g in zip(params.items(), grads)}
        test_loss, test_parts, test_features = torch.func.functional_call(
            self, fast, (test_batch,), {"step": step, "episode": False, "with_features": True}, strict=False)
        alignment = mmd(test_features, train_features.detach(), bandwidth=ALIGNMENT_BANDWIDTH)
        loss = train_loss + test_loss + self.weights["alignment"] * alignment
        parts = {**{f"meta_train/{k}": v for k, v in train_parts.items()},
                 **{f"meta_test/{k}": v for k, v in test_parts.items()},
                 "meta_train": train_loss, "meta_test": test_loss, "alignment": alignment}
        return MIMOutput(loss=loss, parts={k: v.detach() for k, v in parts.items()})

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if any(key.startswith("text.") for key in state_dict):  # the towers are someone's weights now
            self._random_towers = False
        return result

    def __call__(self, batch: dict, step: int | None = None, episode: bool = True, with_features: bool = False):
        if self._random_towers and self.training:
            log.warning("gm_df: no CLIP weights given (clip_weights) and none loaded: the image encoder and text "
                        "tower are RANDOM; GM-DF expects a local open_clip ViT-B/16 checkpoint (or a pretrained "
                        "mimkit run)")
            self._random_towers = False  # once per model
        if with_features:  # the meta-test pass (through functional_call): loss, parts and features
            loss, parts, features, _ = self.losses(batch, step)
            return loss, parts, features
        return super().__call__(batch, step=step, episode=episode)

    def reconstruct(self, batch: dict, out: MIMOutput | None = None) -> torch.Tensor:
        images = self.images(batch)
        if out is None or out.pred is None or out.pred.shape[0] != images.shape[0]:
            _, pred, _ = self.reconstruction(images)
        else:
            pred = out.pred
        return self.target.to_pixels(pred, images)


def _subset(batch: dict, keep: torch.Tensor) -> dict:
    """The samples of a batch where `keep` (B,) is true: tensors indexed, lists filtered."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.ndim and value.shape[0] == keep.shape[0]:
            out[key] = value[keep.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == keep.shape[0]:
            out[key] = [v for v, k in zip(value, keep.tolist()) if k]
        else:
            out[key] = value
    return out


__all__ = ["GMDF", "CLIPViTEncoder", "HybridExpertBlock", "PromptLearner", "mmd", "split_domains",
           "DEFAULT_DOMAINS", "CLASSES"]
