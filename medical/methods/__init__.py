"""mimkit.medical methods; importing this package registers them."""
from . import hiend_mae, memmc_mae, thorax_mae, uni4eye, urfound  # noqa: F401
