"""mimkit.faces methods; importing this package registers them."""
