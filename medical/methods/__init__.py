"""mimkit.medical methods; importing this package registers them."""
from . import uni4eye  # noqa: F401
