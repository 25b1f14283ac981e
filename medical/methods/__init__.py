"""mimkit.medical methods; importing this package registers them."""
