"""mimkit.medical methods; importing this package registers them."""
from . import thorax_mae, uni4eye  # noqa: F401
