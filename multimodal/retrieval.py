"""Image-text retrieval: recall@1/5/10 from image to caption and back, for methods that score image-caption pairs
(`method.retrieval_scores(images, texts)`: m3ae's ITM head, xformer's contrastive similarity). Zero-shot: the
pretrained method scores the test split as it is (M3AE's paper fine-tunes on ROCO's retrieval split first; a
fine-tuning step is not part of this protocol). Registered with mimkit.benchmarks through mimkit.multimodal.bench.

M3AE's scores mean something only once its matching head has learnt (its ITM loss leaves ln 2): on pictures whose
captions name what they show, a tiny M3AE gets there within a few hundred steps and then ranks the right caption
first far above chance (tests/multimodal/test_retrieval.py). On the synthetic digits, trained from scratch (the paper
starts from CLIP's ViT and RoBERTa), a small M3AE had not learnt matching after 500-1,000 steps (recall@1 at chance),
so zero-shot retrieval there measures nothing yet; warm-starting the image encoder (`pretrained=`) is the paper's way.

Tasks: `image-text-retrieval` reads ROOT/captions_test.csv (columns image, text; reader options test_file,
layout, image_root), `synthetic-digits-retrieval` what `mimkit-multimodal synthetic --kind digits` writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mimkit.benchmarks.tasks import Task
from mimkit.core.errors import ConfigError, DataError

from .data import ImageTextDataset

RECALL_AT = (1, 5, 10)


def recall_at_k(scores: torch.Tensor, texts: Sequence[str], ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Recall@k (fractions) of a square score matrix whose pair i is (image i, caption i), both ways; a caption
    identical to the true one counts as a hit (captions built from labels repeat). `recall@k` is the mean of the
    two directions."""
    count = len(texts)
    if scores.shape != (count, count):
        raise DataError(f"retrieval scores must be (images, captions) = ({count}, {count}), got {tuple(scores.shape)}")
    index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    ids = torch.tensor([index[t] for t in texts])
    same = ids[:, None] == ids[None, :]
    out = {}
    for k in ks:
        top = min(k, count)
        to_text = same.gather(1, scores.topk(top, dim=1).indices).any(1).float().mean().item()
        to_image = same.t().gather(1, scores.t().topk(top, dim=1).indices).any(1).float().mean().item()
        out.update({f"image_to_text_recall@{k}": to_text, f"text_to_image_recall@{k}": to_image,
                    f"recall@{k}": (to_text + to_image) / 2})
    out["rsum"] = sum(out[f"{d}_recall@{k}"] for d in ("image_to_text", "text_to_image") for k in ks)
    return out


def retrieval_runner(subject: nn.Module, train_set, test_set, root: Path, batch_size: int = 64,
                     max_items: int | None = None, seed: int = 0, device=None) -> dict:
    """Score every (test image, test caption) pair with the method and measure recall@1/5/10 both ways;
    `max_items` keeps the first pairs of the test split (M3AE's scores cost one fusion per pair)."""
    if not callable(getattr(subject, "retrieval_scores", None)):
        raise ConfigError(f"image-text retrieval needs a method that scores image-caption pairs (m3ae, xformer); "
                          f"got {type(subject).__name__}")
    from mimkit.core.evaluate import default_device

    device = default_device(device)
    count = len(test_set) if max_items is None else min(len(test_set), int(max_items))
    texts = [test_set.texts[i] for i in range(count)]
    was_training = subject.training
    subject.eval().to(device)
    rows = []
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                images = torch.stack([test_set[i]["image"] for i in range(start, min(start + batch_size, count))])
                rows.append(subject.retrieval_scores(images.to(device), texts).float().cpu())
    finally:
        subject.train(was_training)
    return {**recall_at_k(torch.cat(rows), texts), "pairs": count}


def caption_reader(test_file: str = "captions_test.csv", train_file: str = "captions_train.csv"):
    """A task reader: read(root, img_size, in_chans, mean, std, layout, image_root) -> (train, test)
    ImageTextDatasets (the train split is read for its statistics; the protocol is zero-shot)."""

    def read(root: Path, img_size=32, in_chans: int | None = None, mean=None, std=None, layout: str = "csv",
             image_root: str | None = None, image_column: str | None = None, text_column: str | None = None,
             strict: bool = False, test_file: str = test_file, train_file: str = train_file):
        common = dict(layout=layout, image_root=image_root, image_column=image_column, text_column=text_column,
                      img_size=img_size, transform="eval", strict=strict)
        train_path = Path(root) / train_file
        if mean is None and train_path.is_file():
            mean, std = ImageTextDataset(train_path, in_chans=in_chans, **common).stats
        test = ImageTextDataset(Path(root) / test_file, in_chans=in_chans, mean=mean, std=std, **common)
        return test, test
    return read


def retrieval_tasks(prepare) -> list[Task]:
    """The retrieval tasks, with the domain's `prepare` (images at the run's size, channels and statistics)."""
    description = ("Zero-shot image-text retrieval, recall@1 (%, mean of image-to-text and text-to-image; R@5, "
                   "R@10 in the details)")
    return [
        Task("image-text-retrieval", "multimodal", "image + caption (local)", "retrieval", "recall@1",
             caption_reader(), f"{description}; ROOT holds captions_test.csv (image, text)",
             runner=retrieval_runner, prepare=prepare, metric_key="recall@1"),
        Task("synthetic-digits-retrieval", "multimodal", "mimkit synthetic digits + captions", "retrieval",
             "recall@1", caption_reader(), f"{description}; scikit-learn's digits with captions from their labels",
             runner=retrieval_runner, prepare=prepare, metric_key="recall@1", settings={"max_items": 200}),
    ]
