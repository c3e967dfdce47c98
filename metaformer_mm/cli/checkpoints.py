"""Checkpoints the tools read: the one ``tools/test.py`` evaluates (strictly, released
layouts converted) and the one ``tools/train.py --resume`` continues from."""
import copy
import os.path as osp
from typing import Any, Dict, Tuple

from mmengine.logging import MMLogger

from .config import ToolError

# Checkpoint conversion kind of each scope (see metaformer_mm.checkpoint).
LEGACY_KIND = {'mmdet': 'mmdet2', 'mmseg': 'mmseg0'}


def _is_remote(path: str) -> bool:
    return '://' in path


def load_test_checkpoint(path: str, scope: str) -> Tuple[Dict, Dict]:
    """For ``tools/test.py``: the model state of ``path`` and its ``dataset_meta``.

    Released mmdet 2.x / mmseg 0.x checkpoints (a MetaFormer backbone in a foreign layout,
    such as the sail-sg releases) are converted in memory; this project's own come as they are.
    """
    from ..checkpoint import (convert_detector_checkpoint, detector_backbone_layout,
                             detector_dataset_meta, extract_state_dict, read_checkpoint)
    if not _is_remote(path) and not osp.isfile(path):
        raise ToolError(f'checkpoint file not found: {path}')
    raw = read_checkpoint(path)
    state = extract_state_dict(raw, path)
    layout = detector_backbone_layout(state)
    if layout not in (None, 'metaformer_mm'):
        state = convert_detector_checkpoint(state, LEGACY_KIND[scope])
        MMLogger.get_current_instance().info(
            f'{path}: backbone in the {layout} layout ({LEGACY_KIND[scope]} release); '
            f'converted {len(state)} tensors to this project\'s keys')
    return state, detector_dataset_meta(raw)


def load_state_into_runner(runner: Any, state: Dict, dataset_meta: Dict) -> None:
    """Loads a state dict into the Runner's model strictly: a checkpoint of another config
    is an error, not an evaluation of half-initialised weights."""
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    try:
        # strict=False only to word the error: any missing or unexpected key is refused below.
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        detail = ' '.join(str(err).split('\n')[1:3]).strip()
        raise ToolError(f'the checkpoint does not fit the config\'s model: {detail} '
                        f'(is it a checkpoint of another config?)') from None
    if result.missing_keys or result.unexpected_keys:
        raise ToolError(
            f'the checkpoint does not fit the config\'s model: '
            f'{len(result.missing_keys)} missing keys {result.missing_keys[:6]}, '
            f'{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:6]} '
            f'(is it a checkpoint of another config?)')
    if dataset_meta:
        model.dataset_meta = copy.deepcopy(dataset_meta)
