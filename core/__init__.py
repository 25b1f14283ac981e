"""mimkit.core: the shared masked-image-modeling parts (tokens, masking, encoders, decoders, targets,
methods, training, evaluation, checkpoints)."""
from importlib.metadata import PackageNotFoundError, version

from .errors import MimkitError
from .methods.base import MIMMethod, MIMOutput
from .registry import build_method, list_methods, register_method

try:
    __version__ = version("mimkit")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["MimkitError", "MIMMethod", "MIMOutput", "build_method", "list_methods", "register_method", "__version__"]
