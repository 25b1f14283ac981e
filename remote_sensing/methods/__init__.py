"""mimkit.remote_sensing methods; importing this package registers them."""
from . import smarties  # noqa: F401
from . import cha_mae  # noqa: F401
from . import selective_mae  # noqa: F401
