"""mimkit.remote_sensing methods; importing this package registers them."""
