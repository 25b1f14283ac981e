"""Image + caption pretraining data: the `data` section of `mimkit-multimodal pretrain` for the image-text methods
(m3ae, xformer); the files are read by `mimkit.multimodal.data.ImageTextDataset`."""
from __future__ import annotations

from dataclasses import dataclass

from mimkit.core.errors import ConfigError

from .data import ImageTextDataset

# the registered methods that read batch["text"] captions and pretrain on image + caption files
TEXT_METHODS = ("m3ae", "xformer")


@dataclass
class ImageTextData:
    """Images with a caption or report each (ROCO, MedICaT, R2Gen's annotation.json for MIMIC-CXR / IU X-ray, or
    any CSV / JSONL with an image and a text column).

    Args:
        root: the caption file (.csv, .jsonl; annotation.json for the r2gen layout)
        layout: roco, medicat, csv (columns image, text) or r2gen
        image_root: the folder image paths are relative to (default: the file's folder)
        split: the split of an annotation.json to read
        image_column: the image-path column, when not the layout's
        text_column: the caption column, when not the layout's
        augment: random resized crops and flips; off (M3AE's "clip" transform: resize and centre crop only)
        crop_scale: the crops' area range when augmenting
        mean: per-channel image mean after scaling to [0, 1] (None: measured)
        std: per-channel standard deviation (None: measured)
        strict: stop at the first bad row instead of leaving it out and counting it
    """

    root: str | None = None
    layout: str = "csv"
    image_root: str | None = None
    split: str = "train"
    image_column: str | None = None
    text_column: str | None = None
    augment: bool = False
    crop_scale: tuple[float, float] = (0.2, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    strict: bool = False

    def default_method(self) -> str:
        return "m3ae"

    def build(self, model: dict, method: str) -> ImageTextDataset:
        """The pretraining dataset at the method's image size; the measured statistics are kept here."""
        from mimkit.core.config import encoder_setting

        if self.root is None:
            raise ConfigError("no data given: pass --data FILE (a CSV / JSONL of image paths and captions)")
        dataset = ImageTextDataset(self.root, self.layout, self.image_root, self.split, self.image_column,
                                   self.text_column, img_size=encoder_setting(model, "img_size", method),
                                   in_chans=encoder_setting(model, "in_chans"),
                                   transform="train" if self.augment else "eval", crop_scale=tuple(self.crop_scale),
                                   hflip=self.augment, mean=self.mean, std=self.std, strict=self.strict)
        self.mean, self.std = dataset.stats
        return dataset
