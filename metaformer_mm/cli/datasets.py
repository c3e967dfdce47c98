"""The tools' dataset check: every file a command will read is there, or one message says
what is missing and how to point the config at the dataset."""
import os
import os.path as osp
from typing import Any, List, Optional, Tuple

from mmengine.config import Config


class DatasetMissingError(FileNotFoundError):
    """The files a config's datasets read are not there; the message says what and how to fix."""


# Dataloaders and evaluators each command reads; val only when the train loop validates.
_PHASES = {
    'train': (('train_dataloader', None), ('val_dataloader', 'val_evaluator')),
    'test': (('test_dataloader', 'test_evaluator'),),
}


def _is_remote(path: str) -> bool:
    return '://' in path


def _join(root: Optional[str], path: str) -> str:
    # mmengine's BaseDataset joins data_root with relative paths only.
    return path if not root or osp.isabs(path) or _is_remote(path) else osp.join(root, path)


def _dataset_needs(ds: Any, key: str) -> Tuple[List[Tuple[str, str, str]], List[Tuple[str, str]]]:
    """(path, 'file'|'dir', option key) triples a dataset config reads, and its data roots."""
    needs: List[Tuple[str, str, str]] = []
    roots: List[Tuple[str, str]] = []
    if not isinstance(ds, dict):
        return needs, roots
    if isinstance(ds.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        sub_needs, sub_roots = _dataset_needs(ds['dataset'], f'{key}.dataset')
        needs += sub_needs
        roots += sub_roots
    for i, sub in enumerate(ds.get('datasets') or []):  # ConcatDataset
        sub_needs, sub_roots = _dataset_needs(sub, f'{key}.datasets.{i}')
        needs += sub_needs
        roots += sub_roots
    if ds.get('backend_args'):  # a remote storage backend: nothing to check locally
        return needs, roots
    root = ds.get('data_root')
    if root:
        roots.append((f'{key}.data_root', root))
    if ds.get('ann_file'):
        needs.append((_join(root, ds['ann_file']), 'file', key))
    prefix = ds.get('data_prefix') or {}
    if isinstance(prefix, dict):
        for value in prefix.values():
            if isinstance(value, str) and value:
                needs.append((_join(root, value), 'dir', key))
    return needs, roots


def _evaluator_needs(ev: Any, key: str) -> List[Tuple[str, str, str]]:
    if isinstance(ev, (list, tuple)):
        return [n for i, e in enumerate(ev) for n in _evaluator_needs(e, f'{key}.{i}')]
    if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str) and ev['ann_file'] \
            and not ev.get('backend_args'):
        return [(ev['ann_file'], 'file', f'{key}.ann_file')]
    return []


def dataset_requirements(cfg: Config, phase: str) -> Tuple[List[Tuple[str, str, str]],
                                                             List[Tuple[str, str]]]:
    """Files/dirs that ``phase`` ('train' or 'test') reads, and the data roots they hang from.

    Returns ``(needs, roots)``: ``needs`` holds ``(path, 'file'|'dir', cfg key)``, ``roots``
    ``(cfg key of a data_root, its value)``.
    """
    if phase not in _PHASES:
        raise ValueError(f'phase must be one of {sorted(_PHASES)}, got {phase!r}')
    needs: List[Tuple[str, str, str]] = []
    roots: List[Tuple[str, str]] = []
    for loader_key, evaluator_key in _PHASES[phase]:
        loader = cfg.get(loader_key)
        if not loader:
            continue
        if phase == 'train' and loader_key == 'val_dataloader' and not (
                cfg.get('val_cfg') and cfg.get('val_evaluator')):
            continue  # the Runner builds no validation loop
        ds_needs, ds_roots = _dataset_needs(loader.get('dataset'), f'{loader_key}.dataset')
        needs += ds_needs
        roots += ds_roots
        if evaluator_key:
            needs += _evaluator_needs(cfg.get(evaluator_key), evaluator_key)
    return [n for n in needs if not _is_remote(n[0])], roots


def check_dataset(cfg: Config, phase: str, config_name: str = 'the config') -> None:
    """Raises :class:`DatasetMissingError` naming every missing file and how to fix it.

    Call before building the Runner, so that a missing dataset is one message rather than a
    stack trace from deep inside dataset construction.
    """
    needs, roots = dataset_requirements(cfg, phase)
    # test_dataloader is usually val_dataloader: report each path once.
    missing = list(dict.fromkeys((p, kind) for p, kind, _ in needs
                                 if not (osp.isdir(p) if kind == 'dir' else osp.isfile(p))))
    if not missing:
        return
    where = ('' if all(osp.isabs(p) for p, _ in missing)
             else f' (relative to {os.getcwd()})')
    lines = [f'The dataset that {config_name} reads is missing. Not found{where}:']
    lines += [f'  {p.rstrip("/") + "/" if kind == "dir" else p}' for p, kind in missing]
    lines.append(_fix_hint(cfg, needs, roots))
    raise DatasetMissingError('\n'.join(lines))


def _fix_hint(cfg: Config, needs: List[Tuple[str, str, str]],
              roots: List[Tuple[str, str]]) -> str:
    values = sorted({r.rstrip('/') for _, r in roots})
    name = osp.basename(values[0]) if values else 'dataset'
    new_root = f'/path/to/{name}/'
    options = [f'{key}={new_root}' for key, _ in roots]
    for path, _, key in needs:  # evaluator annotation files are absolute-ish paths of their own
        if key.endswith('.ann_file'):
            rel = next((path[len(r):].lstrip('/') for r in values if path.startswith(r)), None)
            options.append(f'{key}={new_root}{rel}' if rel
                           else f'{key}=/path/to/{osp.basename(path)}')
    lines = []
    if len(values) == 1 and not osp.isabs(values[0]):
        parent = osp.dirname(values[0])
        mkdir = f'mkdir -p {parent} && ' if parent else ''
        lines.append(f'Put the dataset at {values[0]}/ (e.g. {mkdir}ln -s /path/to/{name} '
                     f'{values[0]}), or point the config elsewhere:')
    else:
        lines.append('Point the config at the dataset:')
    if options:
        lines.append('  --cfg-options ' + ' '.join(dict.fromkeys(options)))
    return '\n'.join(lines)
