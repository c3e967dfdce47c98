"""Models: token mixers, norms and the MetaFormer backbones."""
from .backbones import *  # noqa: F401,F403
from .mixers import MIXERS, build_mixer  # noqa: F401
from .norms import build_norm  # noqa: F401
