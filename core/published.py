"""Published results of the core methods (MAE, CAE, SimMIM, MaskAlign, MR-MAE, DMJD) on ImageNet-1K, each with its
source; registered with mimkit.benchmarks' registry when core.bench is imported.

Every number was checked against the text of its source; the `table` field says where it is.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results


# ---------------------------------------------------------------------------------------------- MAE
MAE_PAPER = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022 (arXiv:2111.06377)"
MAE_REPO = "facebookresearch/mae, FINETUNE.md (official PyTorch re-implementation)"
_LONG = "1600-epoch pre-training, normalised-pixel target"   # the released models (Table 3 caption)
_ABLATION = "800-epoch pre-training, unnormalised pixels, decoder 8 blocks x 512 (Table 1 default)"
_ABLATION_NORM = "800-epoch pre-training, normalised pixels, decoder 8 blocks x 512 (Table 1d)"


def _mae(value: float, protocol: str, model: str, source: str, table: str, setting: str, img_size: int = 224,
         note: str = "") -> PublishedResult:
    return PublishedResult(value=value, metric="top1", protocol=protocol, model=model, method="mae",
                           data="ImageNet-1K", source=source, table=table, img_size=img_size, setting=setting,
                           note=note)


register_results([
    # Table 3: end-to-end fine-tuning, ImageNet-1K only.
    _mae(83.6, "finetune", "ViT-B/16", MAE_PAPER, "Table 3", _LONG),
    _mae(85.9, "finetune", "ViT-L/16", MAE_PAPER, "Table 3", _LONG),
    _mae(86.9, "finetune", "ViT-H/14", MAE_PAPER, "Table 3", _LONG),
    _mae(87.8, "finetune", "ViT-H/14", MAE_PAPER, "Table 3", _LONG, img_size=448,
         note="fine-tuned and evaluated at 448x448"),
    # Table 12 (Appendix B): linear probing; FINETUNE.md lists the same three as the paper's TF/TPU figures
    # for the released 1600-epoch checkpoints.
    _mae(68.0, "linear", "ViT-B/16", MAE_PAPER, "Table 12", _LONG, note="BatchNorm (affine=False) before the classifier"),
    _mae(75.8, "linear", "ViT-L/16", MAE_PAPER, "Table 12", _LONG, note="BatchNorm (affine=False) before the classifier"),
    _mae(76.6, "linear", "ViT-H/14", MAE_PAPER, "Table 12", _LONG, note="BatchNorm (affine=False) before the classifier"),
    # Table 1: the ablation baseline (ViT-L/16) and its normalised-pixel variant (Table 1d).
    _mae(84.9, "finetune", "ViT-L/16", MAE_PAPER, "Table 1", _ABLATION),
    _mae(73.5, "linear", "ViT-L/16", MAE_PAPER, "Table 1", _ABLATION),
    _mae(85.4, "finetune", "ViT-L/16", MAE_PAPER, "Table 1d", _ABLATION_NORM),
    _mae(73.9, "linear", "ViT-L/16", MAE_PAPER, "Table 1d", _ABLATION_NORM),
    # Section 4.3 (text on Figure 9): partial fine-tuning of the Table 1 baseline.
    _mae(81.0, "partial-finetune", "ViT-L/16", MAE_PAPER, "Section 4.3 / Figure 9",
         _ABLATION + "; last 1 block tuned"),
    _mae(79.1, "partial-finetune", "ViT-L/16", MAE_PAPER, "Section 4.3 / Figure 9",
         _ABLATION + "; only the MLP of the last block tuned"),
    # The official PyTorch repository: evaluation of its released fine-tuned checkpoints, and its own
    # linear-probing runs ("this repo (PT/GPU)").
    _mae(83.664, "finetune", "ViT-B/16", MAE_REPO, "Evaluation table", _LONG, note="released fine-tuned checkpoint"),
    _mae(85.952, "finetune", "ViT-L/16", MAE_REPO, "Evaluation table", _LONG, note="released fine-tuned checkpoint"),
    _mae(86.928, "finetune", "ViT-H/14", MAE_REPO, "Evaluation table", _LONG, note="released fine-tuned checkpoint"),
    _mae(67.8, "linear", "ViT-B/16", MAE_REPO, "Linear Probing table", _LONG, note="PyTorch/GPU re-run"),
    _mae(76.0, "linear", "ViT-L/16", MAE_REPO, "Linear Probing table", _LONG, note="PyTorch/GPU re-run"),
    _mae(77.2, "linear", "ViT-H/14", MAE_REPO, "Linear Probing table", _LONG, note="PyTorch/GPU re-run"),
])


# ---------------------------------------------------------------------------------------------- CAE
CAE_REPO = ("Atten4Vis/CAE, README.md, official code of Chen et al., Context Autoencoder for Self-Supervised "
            "Representation Learning, IJCV 2023 (arXiv:2202.03026)")


def _cae(value: float, protocol: str, model: str, epochs: int) -> PublishedResult:
    return PublishedResult(value=value, metric="top1", protocol=protocol, model=model, method="cae",
                           data="ImageNet-1K", source=CAE_REPO, table="Results table",
                           setting=f"{epochs}-epoch pre-training, DALL-E token targets",
                           note="mimkit's CAE reconstructs normalised pixels instead of DALL-E tokens")


register_results([
    _cae(64.5, "linear", "ViT-B/16", 300),
    _cae(83.6, "finetune", "ViT-B/16", 300),
    _cae(68.9, "linear", "ViT-B/16", 800),
    _cae(83.8, "finetune", "ViT-B/16", 800),
    _cae(70.3, "linear", "ViT-B/16", 1600),
    _cae(83.9, "finetune", "ViT-B/16", 1600),
    _cae(77.8, "linear", "ViT-L/16", 1600),
    _cae(86.2, "finetune", "ViT-L/16", 1600),
])


# ---------------------------------------------------------------------------------------------- SimMIM, MaskAlign, MR-MAE
SIMMIM_REPO = ("microsoft/SimMIM, README.md 'Main Results on ImageNet', official code of Xie et al., SimMIM: A Simple "
               "Framework for Masked Image Modeling, CVPR 2022 (arXiv:2111.09886)")
MASKALIGN_REPO = ("OpenDriveLab/maskalign, ModelCard.md, official code of Xue et al., Stare at What You See: Masked "
                  "Image Modeling without Reconstruction, CVPR 2023 (arXiv:2211.08887)")
MRMAE_PAPER = ("Gao et al., Mimic before Reconstruct: Enhancing Masked Autoencoders with Feature Mimicking, "
               "arXiv:2303.05475 (IJCV 2023)")


def _imagenet(value: float, method: str, model: str, source: str, table: str, setting: str,
              note: str = "") -> PublishedResult:
    return PublishedResult(value=value, metric="top1", protocol="finetune", model=model, method=method,
                           data="ImageNet-1K", source=source, table=table, setting=setting, note=note)


register_results([
    _imagenet(83.8, "simmim", "ViT-B/16", SIMMIM_REPO, "Vision Transformer table", "800-epoch pre-training at 224"),
    _imagenet(84.0, "simmim", "Swin-B", SIMMIM_REPO, "Swin Transformer table", "800-epoch pre-training at 192",
              note="Swin backbone, not implemented in mimkit"),
    _imagenet(85.4, "simmim", "Swin-L", SIMMIM_REPO, "Swin Transformer table", "800-epoch pre-training at 192",
              note="Swin backbone, not implemented in mimkit"),
    _imagenet(85.4, "maskalign", "ViT-B/16", MASKALIGN_REPO, "Model card table",
              "200-epoch pre-training, CLIP ViT-B/16 teacher"),
    _imagenet(86.5, "maskalign", "ViT-L/16", MASKALIGN_REPO, "Model card table",
              "200-epoch pre-training, CLIP ViT-B/16 teacher"),
    _imagenet(87.4, "maskalign", "ViT-L/16", MASKALIGN_REPO, "Model card table",
              "200-epoch pre-training, CLIP ViT-L/14 teacher at 196 px"),
    _imagenet(85.8, "mrmae", "ViT-B/16", MRMAE_PAPER, "Abstract", "400-epoch pre-training, CLIP and DINO teachers",
              note="the ICLR 2023 submission's abstract gives 85.8 for MR-MCMAE (with masked convolution stages, "
                   "not in mimkit) and 85.0 for MR-MAE after 200 epochs"),
])


# ---------------------------------------------------------------------------------------------- DMJD
DMJD_REPO = ("mx-mark/DMJD, README.md 'Main results on ImageNet-1K', official code of Ma et al., Disjoint Masking with "
             "Joint Distillation for Efficient Masked Image Modeling, arXiv:2301.00230 (IEEE TMM 2023)")
_DMJD_TABLE = "Main results on ImageNet-1K (README)"


def _dmjd(value: float, protocol: str, model: str, epochs: int, note: str) -> PublishedResult:
    # `epochs` is the README's ETE column ("effective training epochs", as the paper's abstract calls them).
    return PublishedResult(value=value, metric="top1", protocol=protocol, model=model, method="dmjd",
                           data="ImageNet-1K", source=DMJD_REPO, table=_DMJD_TABLE,
                           setting=f"{epochs} effective training epochs, HOG targets", note=note)


_DMJD_VIT = "MaskFeat + DMJD; the README writes 'ViT-B' (its ViT code defaults to 16-pixel patches)"
_DMJD_CONVIT = "ConvMAE + DMJD on the hybrid convolution-transformer ConViT backbone, not implemented in mimkit"

register_results([
    _dmjd(84.1, "finetune", "ViT-B/16", 1600, _DMJD_VIT),
    _dmjd(71.9, "linear", "ViT-B/16", 1600, _DMJD_VIT),
    _dmjd(85.2, "finetune", "ConViT-B", 800, _DMJD_CONVIT),
    _dmjd(76.7, "linear", "ConViT-B", 800, _DMJD_CONVIT),
    _dmjd(86.3, "finetune", "ConViT-L", 800, _DMJD_CONVIT),
    _dmjd(79.7, "linear", "ConViT-L", 800, _DMJD_CONVIT),
])


# ---------------------------------------------------------------------------------------------- UMD
UMD_REPO = ("philippe-eecs/small-vision, README.md, official JAX code of Hansen-Estruch et al., Unified Auto-Encoding "
            "with Masked Diffusion, arXiv:2406.17688")
_UMD_PRETRAIN = "800-epoch pre-training on ImageNet-1K"  # README: "Each reported number was taken at 800 Epochs"
_UMD_GENERATION = ("class-conditional fine-tuning for 50 epochs after pre-training; 10k samples, 125 DDIM steps "
                   "(lower is better)")
_UMD_LATENT = "Latent-UMD on Stable Diffusion's VAE latents (32 x 32 x 4): recipe core/recipes/umd_latent.yaml"


def _umd(value: float, protocol: str, metric: str, model: str, method: str, table: str, setting: str,
         img_size: int, note: str = "") -> PublishedResult:
    return PublishedResult(value=value, metric=metric, protocol=protocol, model=model, method=method,
                           data="ImageNet-1K", source=UMD_REPO, table=table, img_size=img_size, setting=setting,
                           note=note)


register_results([
    _umd(31.8, "few-shot", "top1", "ViT-B/4", "umd", "Pre-Training Commands (100 Shot LP)", _UMD_PRETRAIN, 64,
         note="100-shot linear probe"),
    _umd(36.6, "few-shot", "top1", "ViT-B/4", "mae", "Pre-Training Commands (100 Shot LP)", _UMD_PRETRAIN, 64,
         note="100-shot linear probe; MAE-B/4 trained in UMD's code (adaln=False, batch 4096)"),
    _umd(54.4, "few-shot", "top1", "ViT-L/2", "umd", "Pre-Training Commands (100 Shot LP)", _UMD_PRETRAIN, 256,
         note=f"100-shot linear probe; {_UMD_LATENT}"),
    _umd(19.8, "finetune", "fid10k", "ViT-B/4", "umd", "Fine-Tuning Command for Class-Conditional Generation",
         _UMD_GENERATION, 64),
    _umd(3.96, "finetune", "fid10k", "ViT-L/2", "umd", "Fine-Tuning Command for Class-Conditional Generation",
         _UMD_GENERATION, 256, note=_UMD_LATENT),
])


# ---------------------------------------------------------------------------------------------- MaskDCPT
MASKDCPT_REPO = ("MILab-PKU/MaskDCPT, README.md, official code (inference only) of Hu et al., Universal Image "
                 "Restoration Pre-training via Masked Degradation Classification")
_MASKDCPT_TABLE = "5D All-in-one Image Restoration (assets/maskdcpt_5d.png), NAFNet rows"
_MASKDCPT_TASKS = {"dehazing": (31.40, 0.978, 25.23, 0.939), "deraining": (39.92, 0.986, 35.56, 0.967),
                   "denoising": (31.41, 0.894, 31.02, 0.883), "deblurring": (31.40, 0.920, 26.53, 0.808),
                   "low-light": (26.31, 0.888, 20.49, 0.809)}
_MASKDCPT_NOTE = ("NAFNet is a convolutional restoration network, not implemented in mimkit (mimkit's MaskDCPT uses "
                  "its ViT)")


def _maskdcpt(value: float, metric: str, task: str, pretrained: bool) -> PublishedResult:
    setting = "NAFNet + MaskDCPT pre-training" if pretrained else "NAFNet without pre-training (the table's baseline)"
    return PublishedResult(value=value, metric=metric, protocol="finetune", model="NAFNet", method="maskdcpt",
                           data=f"5D all-in-one restoration: {task}", source=MASKDCPT_REPO, table=_MASKDCPT_TABLE,
                           img_size=0, setting=setting, note=_MASKDCPT_NOTE)  # 0: the table names no size


register_results([
    result
    for task, (psnr, ssim, base_psnr, base_ssim) in _MASKDCPT_TASKS.items()
    for result in (_maskdcpt(psnr, "psnr", task, True), _maskdcpt(ssim, "ssim", task, True),
                   _maskdcpt(base_psnr, "psnr", task, False), _maskdcpt(base_ssim, "ssim", task, False))
])
