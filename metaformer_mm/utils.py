"""``register_all_modules``, called by ``mmengine.hub.get_model`` before it builds the model."""
import time

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope, Registry

SCOPE = 'metaformer_mm'


class DownstreamModels(Registry):
    """The ``metaformer_mm`` scope of mmengine's model registry: a type resolves in mmdet's
    registry, else mmseg's, and the rest of that build runs in that scope."""

    def get(self, key: str):
        from .registry import REGISTRIES
        for scope, registry in REGISTRIES.items():
            cls = registry.get(key)
            if cls is not None:
                # get_model's overwrite_default_scope restores the scope after the build
                DefaultScope.get_instance(f'{scope}-{time.time_ns()}', scope_name=scope)
                return cls
        return super().get(key)


MODELS = DownstreamModels('model', parent=MMENGINE_MODELS, scope=SCOPE)


def register_all_modules(init_default_scope: bool = True) -> None:
    """Registers the backbones (``import metaformer_mm``); with ``init_default_scope``, makes
    ``metaformer_mm`` the default scope unless it already is."""
    import metaformer_mm  # noqa: F401
    current = DefaultScope.get_current_instance()
    if init_default_scope and (current is None or current.scope_name != SCOPE):
        DefaultScope.get_instance(f'{SCOPE}-{time.time_ns()}', scope_name=SCOPE)
