"""mimkit.multimodal methods; importing this package registers them."""
