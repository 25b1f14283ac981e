"""mimkit.faces methods; importing this package registers them."""
from . import gm_df  # noqa: F401
from . import vec2face  # noqa: F401
