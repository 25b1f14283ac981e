"""M3AE: whole-word MLM at 15% and MIM at 75% of the patches, the MIM decoder reads the configured fusion layer,
the text head predicts only the chosen words, image-text matching shows half the pairs another image, the loss
falls on fixed data. Images: scikit-learn's handwritten digits (real pixels), captions made from their labels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimkit.core import build_method
from mimkit.core.errors import DataError
from mimkit.multimodal.methods import m3ae as m3ae_module
from mimkit.multimodal.text import TextTokenizer, corrupt_chosen, whole_word_mask

WORDS = "zero one two three four five six seven eight nine".split()
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, text_width=32, text_depth=1,
            text_num_heads=2, hidden_size=32, fusion_layers=2, fusion_num_heads=2, context_length=24,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mim_layer=1)


def digit_pairs(count: int, size: int = 32, seed: int = 0) -> dict:
    """scikit-learn's 8 x 8 handwritten digits (upsampled, RGB) with a caption made from each label."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    index = np.random.default_rng(seed).choice(len(digits.images), count, replace=False)
    images = torch.tensor(digits.images[index] / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return {"image": images, "text": [f"a handwritten digit {WORDS[k]}" for k in digits.target[index]],
            "label": torch.tensor(digits.target[index])}


def tiny(**extra):
    torch.manual_seed(0)
    return build_method("m3ae", **{**TINY, **extra})


def test_mlm_chooses_fifteen_percent_of_the_pieces_as_whole_words():
    tokenizer = TextTokenizer(77)
    single = " ".join(["digit"] * 40)  # one piece per word: the budget is met exactly
    tokens = tokenizer([single, "a handwritten digit seven"])
    chosen = whole_word_mask(tokens, 0.15, torch.Generator().manual_seed(0))
    assert chosen.sum(1).tolist() == [6, 1]  # round(0.15 * 40) = 6; at least one
    # words of several pieces are chosen whole or not at all
    tokens = tokenizer(["pneumothorax cardiomegaly atelectasis consolidation in the radiograph of the thorax"] * 20)
    assert (tokens.word_index.max(1).values > 0).all()
    chosen = whole_word_mask(tokens, 0.15, torch.Generator().manual_seed(1))
    for row in range(20):
        for word in range(int(tokens.word_index[row].max()) + 1):
            pieces = chosen[row][tokens.word_index[row] == word]
            assert pieces.all() or not pieces.any()
    budget = round(0.15 * int(tokens.words[0].sum()))
    assert (chosen.sum(1) <= max(budget, int(torch.bincount(tokens.word_index[0][tokens.words[0]]).max()))).all()
    assert not (chosen & ~tokens.words).any()  # never the start, end or padding token


def test_bert_corruption_touches_only_the_chosen_pieces():
    ids = torch.randint(1, 1000, (64, 40))
    chosen = torch.rand(64, 40) < 0.5
    out = corrupt_chosen(ids, chosen, mask_id=5000, vocab_size=1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[~chosen], ids[~chosen])
    masked = (out[chosen] == 5000).float().mean().item()
    kept = (out[chosen] == ids[chosen]).float().mean().item()
    assert 0.75 < masked < 0.85 and 0.05 < kept < 0.16


def test_mim_drops_seventy_five_percent_of_the_patches_before_the_encoder():
    model, batch = tiny(), digit_pairs(4)
    seen = []
    forward_visible = model.encoder.forward_visible
    model.encoder.forward_visible = lambda x, ids_keep, *a, **k: seen.append(ids_keep) or forward_visible(
        x, ids_keep, *a, **k)
    out = model(batch)
    masked_calls = [ids for ids in seen if ids is not None]
    assert len(masked_calls) == 1 and masked_calls[0].shape == (4, 4)  # 16 patches, 4 visible
    assert out.mask.shape == (4, 16) and out.mask.sum(1).tolist() == [12] * 4
    kept = torch.zeros(4, 16).scatter_(1, masked_calls[0], 1.0)
    assert torch.equal(kept, 1 - out.mask)  # the encoder saw exactly the patches that are not scored


@pytest.mark.parametrize("mim_layer", [0, 1, 2, -1])
def test_the_image_decoder_reads_the_configured_fusion_layer(mim_layer):
    model, batch = tiny(mim_layer=mim_layer).eval(), digit_pairs(3)
    layer_outputs, decoder_inputs = {}, []
    for i, layer in enumerate(model.image_layers):
        layer.register_forward_hook(lambda m, args, out, i=i: layer_outputs.setdefault(i, []).append(out))
    model.image_proj.register_forward_hook(lambda m, args, out: layer_outputs.setdefault("in", []).append(out))
    model.decoder.register_forward_pre_hook(lambda m, args: decoder_inputs.append(args[0]))
    with torch.no_grad():
        model(batch)
    assert len(decoder_inputs) == 1
    read = decoder_inputs[0]
    assert read.shape[1] == 1 + 4  # class token + the visible patches
    expected_layer = 2 if mim_layer == -1 else mim_layer
    if expected_layer == 0:  # the projected image tokens with their modality embedding, before any fusion
        candidates = [out + model.modality_embed.weight[1] for out in layer_outputs["in"]]
    else:
        candidates = layer_outputs[expected_layer - 1]
    assert any(out.shape == read.shape and torch.equal(out, read) for out in candidates)
    for other in {0, 1} - {expected_layer - 1}:  # no other layer's masked-image output is what the decoder read
        assert not any(out.shape == read.shape and torch.allclose(out, read) for out in layer_outputs[other])


def test_the_text_head_predicts_only_the_chosen_words(monkeypatch):
    model, batch = tiny(), digit_pairs(4)
    chosen_masks, head_rows = [], []
    original = m3ae_module.whole_word_mask
    monkeypatch.setattr(m3ae_module, "whole_word_mask",
                        lambda tokens, ratio, *a: chosen_masks.append(original(tokens, ratio, *a)) or chosen_masks[-1])
    model.mlm_head.register_forward_pre_hook(lambda m, args: head_rows.append(args[0].shape))
    model(batch)
    assert len(chosen_masks) == 1 and len(head_rows) == 1
    assert head_rows[0][0] == int(chosen_masks[0].sum()) == 4  # "a handwritten digit N": 4 pieces -> one word each


def test_image_text_matching_shows_half_the_pairs_another_image(monkeypatch):
    model, batch = tiny(), digit_pairs(6)
    shown = []
    forward_features = model.encoder.forward_features
    model.encoder.forward_features = lambda x, *a, **k: shown.append(x) or forward_features(x, *a, **k)
    model(batch)
    itm_images = shown[-1]  # MLM then ITM read whole images; the ITM pass is the last
    same = [torch.equal(itm_images[i], batch["image"][i]) for i in range(6)]
    assert sum(same) == 3
    for i in range(6):  # a negative is another pair's image, never a blank or a copy of its own
        assert any(torch.equal(itm_images[i], batch["image"][j]) for j in range(6))


def test_loss_falls_on_fixed_data(fixed_batch_training):
    model, batch = tiny(dropout=0.0), digit_pairs(6)
    run = fixed_batch_training(model, batch, steps=15, lr=5e-3, reseed=4)
    assert run.last(3) < 0.85 * run.first(3)
    for part in ("mlm", "mim"):  # matching learns more slowly than 15 steps show; it is in the total
        assert run.last(3, part) < 0.9 * run.first(3, part), part


def test_a_batch_without_captions_is_refused_naming_the_key():
    with pytest.raises(DataError, match=r"batch\['text'\]"):
        tiny()({"image": torch.rand(2, 3, 32, 32)})


def test_without_captions_evaluation_runs_masked_image_modelling_alone():
    model, batch = tiny().eval(), digit_pairs(2)
    with torch.no_grad():
        out = model({"image": batch["image"]})
    assert set(out.parts) == {"mim"} and out.mask.sum(1).tolist() == [12, 12]
    assert model.reconstruct({"image": batch["image"]}, out).shape == batch["image"].shape


def test_image_text_data_reads_a_caption_file_at_the_methods_image_size(tmp_path):
    from PIL import Image

    from mimkit.multimodal.text_data import ImageTextData

    pairs = digit_pairs(3, size=16)
    rows = ["image,text"]
    for i, (image, text) in enumerate(zip(pairs["image"], pairs["text"])):
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(tmp_path / f"d{i}.png")
        rows.append(f"d{i}.png,{text}")
    rows.append("missing.png,a handwritten digit one")  # named and counted, not read
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    data = ImageTextData(root=str(tmp_path / "captions.csv"))
    dataset = data.build({"encoder": {"img_size": 32, "in_chans": 3}}, "m3ae")
    assert len(dataset) == 3 and len(dataset.skipped) == 1 and data.default_method() == "m3ae"
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["text"] == pairs["text"][0]
    assert data.mean is not None  # measured and kept, so the run's config.yaml holds them


def test_the_recipe_holds_the_methods_defaults():
    from pathlib import Path

    import yaml

    from mimkit.core.registry import method_arguments

    recipe = yaml.safe_load((Path(__file__).parents[2] / "multimodal" / "recipes" / "m3ae.yaml").read_text())
    assert recipe["method"] == "m3ae"
    defaults = method_arguments("m3ae")
    model = {**{f"encoder.{k}": v for k, v in recipe["model"].pop("encoder").items()}, **recipe["model"]}
    assert {key: defaults[key] for key in model} == model  # every key is an argument, at its default



def test_image_text_matching_falls_below_chance_on_fixed_data(fixed_batch_training, patterns):
    """With every objective on (MLM + MIM + ITM, as pretraining runs), matching leaves chance (ln 2) on one batch
    whose images a random-init encoder already tells apart: conftest's four pattern classes (stripes both ways, a
    checkerboard, a bright half) with captions naming them. On digits the same model keeps ITM at chance for
    hundreds of steps while MLM learns to read the digit (see the m3ae module docstring): the matching head, its
    poolers and its negatives work; what random init lacks is image features that separate the classes early."""
    names = ["horizontal stripes", "vertical stripes", "a checkerboard", "a bright left half"]
    items = patterns(16, seed=0)
    images = F.interpolate(torch.stack([item["image"] for item in items]), size=32, mode="nearest").repeat(1, 3, 1, 1)
    batch = {"image": (images - 0.5) / 0.5, "text": [f"a picture of {names[item['label']]}" for item in items]}
    run = fixed_batch_training(tiny(dropout=0.0), batch, steps=60, lr=1e-3, reseed=4)
    assert run.first(5, "itm") == pytest.approx(np.log(2), abs=0.01)  # a fresh head: chance
    assert run.last(10, "itm") < 0.96 * np.log(2)
