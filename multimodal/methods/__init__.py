"""mimkit.multimodal methods; importing this package registers them."""
from . import m3ae  # noqa: F401
from . import pigeon  # noqa: F401
from . import xformer  # noqa: F401
from . import tip  # noqa: F401
