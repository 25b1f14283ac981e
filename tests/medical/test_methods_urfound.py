"""UrFound: masked image reconstruction at 2x plus image-conditioned masked-word prediction of the caption."""
import socket

import pytest
import torch

from mimkit.core import build_method, list_methods
from mimkit.core.errors import DataError
from mimkit.medical.methods import urfound as urfound_module

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2, text_width=32, text_depth=1, text_num_heads=2, context_length=24)
CAPTIONS = ["A fundus photograph of diabetic retinopathy", "An Optical Coherence Tomography Image shows drusen",
            "A fundus photograph of glaucoma", "A noisy fundus photograph of no referable diabetic retinopathy"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(4, 3, 64, 64, generator=g), "text": CAPTIONS}


def test_open_clip_tokenizer_is_read_locally_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    urfound_module.caption_tokenizer.cache_clear()
    model = build_method("urfound", **TINY)
    out = model(batch())
    assert torch.isfinite(out.loss)
    tokens, words = model.tokenize(["a fundus photograph"])
    tokenizer = urfound_module.caption_tokenizer(24)
    assert [tokenizer.decoder[int(t)] for t in tokens[0][words[0]]] == ["a</w>", "fun", "dus</w>", "photograph</w>"]
    assert tokens[0, 0] == tokenizer.sot_token_id and tokens[0, 5] == tokenizer.eot_token_id


def test_whole_words_are_masked_and_only_caption_words():
    torch.manual_seed(0)
    model = build_method("urfound", **TINY)
    tokens, words = model.tokenize(CAPTIONS)
    tokenizer = urfound_module.caption_tokenizer(24)
    pieces = [[tokenizer.decoder[int(t)] for t in row] for row in tokens]
    hidden_words, total_words = 0, 0
    for _ in range(50):
        hidden = model.mask_words(tokens, words)
        assert not (hidden & ~words).any()  # never the start/end tokens or padding
        assert hidden.any(1).all()  # at least one word per caption
        for row in range(len(CAPTIONS)):
            for i in range(2, int(words[row].sum()) + 1):  # caption words sit at positions 1..n
                if not pieces[row][i - 1].endswith("</w>"):  # a word piece goes with the piece before it
                    assert hidden[row, i] == hidden[row, i - 1]
            ends = words[row] & model.word_end[tokens[row]]
            hidden_words += int((hidden[row] & ends).sum())
            total_words += int(ends.sum())
    assert 0.4 < hidden_words / total_words < 0.65  # official code: each word hidden with probability 0.5


def test_text_prediction_is_conditioned_on_the_image_and_trains_the_encoder():
    torch.manual_seed(0)
    model = build_method("urfound", **TINY, text_loss_positions="masked")  # the hidden words only
    tokens, words = model.tokenize(CAPTIONS[:1])
    valid = torch.ones_like(tokens, dtype=torch.bool)
    a = model.text_model(tokens, valid, torch.zeros(1, 32))
    b = model.text_model(tokens, valid, torch.ones(1, 32))
    assert not torch.allclose(a, b)
    captured = {}
    model.text_model.register_forward_pre_hook(lambda m, args: captured.__setitem__("tokens", args[0]))
    model.text_model.register_forward_hook(lambda m, args, out: captured.__setitem__("logits", out))
    out = model(batch())
    text_only = out.loss - out.parts["reconstruction"]  # the parts are detached: only the text term keeps grads
    qkv = model.encoder.blocks[0].attn.qkv.weight
    logits_grad, qkv_grad = torch.autograd.grad(text_only, [captured["logits"], qkv])
    hidden = captured["tokens"] == model.text_model.mask_id
    assert hidden.any() and qkv_grad.abs().sum() > 0  # the caption loss reaches the image encoder
    assert torch.all(logits_grad[~hidden] == 0) and torch.all(logits_grad[hidden].abs().sum(-1) > 0)


def test_shapes_high_resolution_target_and_bad_inputs():
    model = build_method("urfound", **TINY)
    data = batch()
    out = model(data)
    assert out.pred.shape == (4, 16, 16 * 16 * 3)  # 4 x 4 tokens, each a 16 x 16 patch of the 64 x 64 image
    assert out.mask.sum(1).tolist() == [12.0] * 4 and set(out.parts) == {"reconstruction", "text"}
    assert model.reconstruct(data, out).shape == (4, 3, 64, 64)
    same_size = build_method("urfound", **{**TINY, "target_scale": 1})
    assert same_size({"image": torch.rand(2, 3, 32, 32), "text": CAPTIONS[:2]}).pred.shape == (2, 16, 192)
    with pytest.raises(DataError, match="target_scale"):
        model({"image": torch.rand(2, 3, 32, 32), "text": CAPTIONS[:2]})
    with pytest.raises(DataError, match="text"):
        model({"image": data["image"]})
    with pytest.raises(DataError, match="text"):
        model({"image": data["image"], "text": CAPTIONS[:3]})


def test_registered_and_both_losses_fall_on_fixed_data(fixed_batch_training):
    assert "urfound" in list_methods()
    torch.manual_seed(0)
    model = build_method("urfound", **TINY)
    run = fixed_batch_training(model, batch(), steps=40, lr=3e-3)
    assert run.last(5) < 0.7 * run.first(5)
    assert run.last(5, "text") < 0.7 * run.first(5, "text")


def test_recipe_loads_and_its_image_size_matches_the_high_resolution_target():
    from importlib import resources

    import yaml
    recipe = yaml.safe_load(resources.files("mimkit.medical").joinpath("recipes", "urfound.yaml").read_text())
    model_cfg = recipe["model"]
    assert recipe["method"] == "urfound" and model_cfg["mask_ratio"] == 0.75 and model_cfg["text_mask_ratio"] == 0.5
    # transforms.py's RandomResizedCrop(448): the encoder's 224 at the reconstruction's target_scale 2
    assert model_cfg.pop("encoder")["img_size"] * model_cfg["target_scale"] == 448
    tiny = {**model_cfg, **TINY}
    model = build_method(recipe["method"], **tiny)
    assert model.input_size == (64, 64)


def test_captions_required_to_train_but_not_for_pictures():
    model = build_method("urfound", **TINY)
    images = batch()["image"]
    with pytest.raises(DataError, match="text"):
        model({"image": images})  # training mode: the caption loss needs captions
    model.eval()
    out = model({"image": images})  # eval mode (pictures, inference): the image path alone
    assert set(out.parts) == {"reconstruction"} and out.pred.shape == (4, 16, 768)
    assert model.output_patch_size == (16, 16)  # each token paints a 16 x 16 patch of the 64 x 64 input


def test_official_text_loss_averages_over_every_position_of_the_context():
    # UrFound's BERT labels every position with its true id (no -100): the masked-LM cross-entropy is the mean
    # over the whole context, padding included, and is added to the image loss with weight 1
    torch.manual_seed(0)
    model = build_method("urfound", **TINY)
    captured = {}
    model.text_model.register_forward_hook(lambda m, args, out: captured.__setitem__("logits", out))
    model.text_model.register_forward_pre_hook(lambda m, args: captured.__setitem__("tokens", args[0]))
    out = model(batch())
    tokens, _ = model.tokenize(CAPTIONS)
    expected = torch.nn.functional.cross_entropy(captured["logits"].float().transpose(1, 2), tokens)
    assert torch.allclose(out.parts["text"], expected.detach())
    assert torch.allclose(out.loss, out.parts["reconstruction"] + expected, atol=1e-6)
