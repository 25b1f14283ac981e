"""The core methods; importing this package registers them."""
from . import mae  # noqa: F401
from . import cae  # noqa: F401
from . import simmim  # noqa: F401
from . import dmjd  # noqa: F401
from . import cropmae  # noqa: F401
from . import maskalign  # noqa: F401
from . import mrmae  # noqa: F401
from . import mixedae  # noqa: F401
from . import maskembed  # noqa: F401
from . import maskdcpt  # noqa: F401
from . import lmd  # noqa: F401
from . import robustmae  # noqa: F401
from . import umd  # noqa: F401
from . import mom  # noqa: F401
