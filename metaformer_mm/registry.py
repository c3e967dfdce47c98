"""Registration of the backbones in mmdet's and mmseg's registries (either may be missing: logged
once), and the ``metaformer_mm`` scope."""
import importlib
from typing import Dict, Type

from mmengine.logging import MMLogger
from mmengine.registry import Registry

# Scope name -> module holding that package's ``MODELS`` registry.
DOWNSTREAM = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}


def _load_registries() -> Dict[str, Registry]:
    registries, missing = {}, []
    for scope, module_name in DOWNSTREAM.items():
        try:
            registries[scope] = importlib.import_module(module_name).MODELS
        except ModuleNotFoundError as err:
            if err.name not in (scope, module_name):
                raise
            missing.append(scope)
    if missing:
        MMLogger.get_current_instance().warning(
            f'metaformer_mm: {", ".join(missing)} not installed; the backbones are registered '
            f'for {", ".join(registries) or "no downstream package"} only')
    return registries


REGISTRIES = _load_registries()


def _scope_nodes() -> None:
    """Makes ``metaformer_mm`` a scope the inferencers can run under
    (``DetInferencer(model=NAME, scope='metaformer_mm')`` looks NAME up in this package's index
    and imports ``<scope>.registry``). Models, datasets and visualizers build in the package their
    ``_scope_`` names; mmdet's untagged base test pipelines resolve here, in mmdet's transforms."""
    from mmengine.registry import FUNCTIONS
    Registry('function', parent=FUNCTIONS, scope='metaformer_mm')
    if 'mmdet' in REGISTRIES:
        from mmdet.registry import TRANSFORMS
        Registry('transform', parent=TRANSFORMS, scope='metaformer_mm')


_scope_nodes()


def register_backbone(cls: Type) -> Type:
    """Class decorator: registers ``cls`` in every available downstream registry."""
    for registry in REGISTRIES.values():
        registry.register_module(module=cls)
    return cls
