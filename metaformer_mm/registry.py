"""Registration of our backbones in mmdet's and mmseg's model registries, and the
``metaformer_mm`` scope of mmengine's transform registry.

Both are optional: a user of only mmseg (or only mmdet) imports ``metaformer_mm`` fine,
and a missing package is logged once, by name. Any other import error is raised.
"""
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
    """Makes ``metaformer_mm`` a scope the inferencers can run under, so that
    ``DetInferencer(model=NAME, scope='metaformer_mm')`` finds NAME in this package's model
    index (mmengine looks names up in the index of the package named by ``scope``, and
    imports ``<scope>.registry`` to build under it). Under that scope the models, datasets
    and visualizers of the configs build in the package their ``_scope_`` names, and so do
    mmseg's transforms; mmdet's base test pipelines are untagged, so their transforms resolve
    here, in mmdet's registry. (Functions, e.g. a ``collate_fn``, are mmengine's.)"""
    from mmengine.registry import FUNCTIONS
    Registry('function', parent=FUNCTIONS, scope='metaformer_mm')
    if 'mmdet' in REGISTRIES:
        from mmdet.registry import TRANSFORMS
        Registry('transform', parent=TRANSFORMS, scope='metaformer_mm')


_scope_nodes()


def register_backbone(cls: Type) -> Type:
    """Class decorator: registers ``cls`` under its name in every available downstream registry."""
    for registry in REGISTRIES.values():
        registry.register_module(module=cls)
    return cls
