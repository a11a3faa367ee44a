"""calbatch: what calendering does to an electrode's 3-D microstructure, in seconds.

Volumes are numpy uint8 arrays indexed ``volume[z, y, x]`` (C order): z is the thickness (press)
axis with z = 0 on the current collector, x and y are periodic in-plane axes. Phase codes:
0 pore, 1 carbon-binder domain (CBD), 2 active material (AM), 4 void above the electrode.
"""

__version__ = "0.1.0"

try:
    from . import _core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise ImportError(
        "calbatch's C++ core (calbatch._core) is not built. From the repository root run "
        "`bash tools/setup.sh` (or `pip install --no-build-isolation -e .`)."
    ) from exc

from .electrode.volume import PHASES, read_volume, write_volume
from .errors import CalbatchError

__all__ = ["CalbatchError", "PHASES", "Predictor", "read_volume", "write_volume", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":  # on first use: importing calbatch stays light (no ONNX Runtime)
        from .surrogate.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'calbatch' has no attribute {name!r}")
