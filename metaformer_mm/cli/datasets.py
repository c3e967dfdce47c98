"""The tools' dataset checks: the files a command reads exist (else one message with the fix),
annotation files are sound, pipeline errors name the file, and library errors that name
none are explained."""
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config

from ..datasets.transforms import DataError
from ..zoo import is_remote
from .coco_file import read_coco_categories, read_json


class DatasetMissingError(FileNotFoundError):
    """The files a config's datasets read are not there; the message says what and how to fix."""


# Dataloaders and evaluators each command reads; val only when the train loop validates.
_PHASES = {
    'train': (('train_dataloader', None), ('val_dataloader', 'val_evaluator')),
    'test': (('test_dataloader', 'test_evaluator'),),
}


def _join(root: Optional[str], path: str) -> str:
    # mmengine's BaseDataset joins data_root with relative paths only.
    return path if not root or osp.isabs(path) or is_remote(path) else osp.join(root, path)


def _walk(ds: Any, key: str) -> Iterator[Tuple[str, dict]]:
    """(cfg key, dict) of a dataset config and the datasets it wraps, wrapped ones first."""
    if isinstance(ds, dict):
        yield from _walk(ds.get('dataset'), f'{key}.dataset')  # RepeatDataset, ...
        for i, sub in enumerate(ds.get('datasets') or []):  # ConcatDataset
            yield from _walk(sub, f'{key}.datasets.{i}')
        yield key, ds


def _dataset_needs(ds: Any, key: str) -> Tuple[List[Tuple[str, str, str]], List[Tuple[str, str]]]:
    """(path, 'file'|'dir', option key) triples a dataset config reads, and its data roots."""
    needs: List[Tuple[str, str, str]] = []
    roots: List[Tuple[str, str]] = []
    for key, d in _walk(ds, key):
        if d.get('backend_args'):  # a remote storage backend: nothing to check locally
            continue
        root = d.get('data_root')
        if root:
            roots.append((f'{key}.data_root', root))
        if d.get('ann_file'):
            needs.append((_join(root, d['ann_file']), 'file', key))
        prefix = d.get('data_prefix') or {}
        if isinstance(prefix, dict):
            needs += [(_join(root, v), 'dir', key) for v in prefix.values()
                      if isinstance(v, str) and v]
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
    """``(needs, roots)`` of ``phase`` ('train' or 'test'): ``(path, 'file'|'dir', cfg key)``
    it reads and ``(cfg key, value)`` of the data roots they hang from."""
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
    return [n for n in needs if not is_remote(n[0])], roots


def check_dataset(cfg: Config, phase: str, config_name: str = 'the config') -> None:
    """Raises :class:`DatasetMissingError` naming every missing file and the fix (before the
    Runner is built, instead of a stack trace)."""
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


# --------------------------------------------------------------------------- what is inside
def _loader_datasets(cfg: Config, phase: str) -> List[Tuple[str, dict]]:
    """(cfg key, dataset dict) of every dataset ``phase`` reads, wrapped ones included."""
    return [found for loader_key, _ in _PHASES[phase] if cfg.get(loader_key)
            for found in _walk(cfg.get(loader_key).get('dataset'), f'{loader_key}.dataset')]


def name_files_in_errors(cfg: Config, phase: str) -> None:
    """Wraps each pipeline ``phase`` reads in ``CheckedCompose``, whose errors name the file."""
    for _, ds in _loader_datasets(cfg, phase):
        pipeline = ds.get('pipeline')
        if isinstance(pipeline, (list, tuple)) and pipeline and not (
                len(pipeline) == 1 and pipeline[0].get('type') == 'CheckedCompose'):
            ds['pipeline'] = [dict(type='CheckedCompose', transforms=list(pipeline))]


def check_annotation_files(cfg: Config, phase: str) -> None:
    """Checks the annotation files ``phase`` reads before any library does: not empty,
    COCO JSON of the types mmdet reads, every class the config selects a category of the file
    (mmdet would silently drop the others and shift the labels); boxes ``CocoDataset`` skips
    are logged once."""
    needs, _ = dataset_requirements(cfg, phase)
    for path, kind, key in needs:
        if kind == 'file' and osp.isfile(path) and osp.getsize(path) == 0:
            raise DataError(f'annotation file {path} ({key}) is empty (0 bytes)')
    datasets = dict(_loader_datasets(cfg, phase))
    categories: Dict[str, Optional[List[str]]] = {}
    for path, kind, key in needs:
        if kind != 'file' or not path.endswith('.json') or not osp.isfile(path):
            continue
        if path not in categories:
            categories[path] = read_coco_categories(path, key, warn_dropped=key in datasets)
        ds_key = key if key in datasets else next(
            (k for k, d in datasets.items()
             if k.startswith(key.split('_evaluator')[0] + '_dataloader.') and _is_leaf(d)),
            None)
        classes = _classes(datasets[ds_key]) if ds_key and categories[path] is not None else None
        if classes:
            _check_classes(phase, key, ds_key, path, classes, categories[path])


def _check_classes(phase: str, key: str, ds_key: str, path: str, classes: Sequence[str],
                   names: List[str]) -> None:
    """Every class the config selects is a category of the file (mmdet maps the ones it finds
    to labels 0..k-1 and drops the others without a word)."""
    missing = [c for c in classes if c not in names]
    if not missing:
        return
    if len(missing) < len(classes):
        raise DataError(f'{key}: the config\'s classes {tuple(classes)} are not all categories '
                        f'of {path}: {missing} are not (its categories: {_listed(names)}); '
                        f'{_fix_classes(ds_key)}')
    # (in training, filter_empty_gt leaves such a dataset empty)
    empty = f'a {phase} dataset is empty: ' if ds_key.startswith('train_dataloader') else ''
    raise DataError(empty + _no_class_of(key, ds_key, classes, path, names))


def _listed(names: List[str]) -> str:
    return f'{names[:10]}{" ..." if len(names) > 10 else ""}'


def _fix_classes(ds_key: str) -> str:
    return f'set {ds_key}.metainfo.classes to the names the file uses'


def _no_class_of(key: str, ds_key: str, classes: Sequence[str], path: str,
                 names: List[str]) -> str:
    return (f'{key}: none of the config\'s classes {tuple(classes)} is a category of {path} '
            f'(its categories: {_listed(names)}); {_fix_classes(ds_key)}')


def _is_leaf(ds: dict) -> bool:
    return ds.get('dataset') is None and not ds.get('datasets')


def _classes(ds: dict) -> Optional[Sequence[str]]:
    """The class names a dataset config selects: its metainfo's, else its type's default."""
    classes = (ds.get('metainfo') or {}).get('classes')
    if classes:
        return list(classes)
    from mmengine.registry import DATASETS
    dataset_type = DATASETS.get(ds.get('type', '')) if isinstance(ds.get('type'), str) else None
    meta = getattr(dataset_type, 'METAINFO', None) or {}
    return list(meta['classes']) if meta.get('classes') else None


def _why_empty(key: str, ds: dict) -> Optional[str]:
    """Why the COCO-format dataset ``ds`` yields no sample, or None."""
    ann = ds.get('ann_file')
    if not (isinstance(ann, str) and ann.endswith('.json')):
        return None
    path = _join(ds.get('data_root'), ann)
    data, problem = read_json(path)
    if data is None:
        return problem
    images, categories = data.get('images') or [], data.get('categories') or []
    if not images:
        return f'{key}: annotation file {path} lists no images'
    names = [c.get('name') for c in categories]
    classes = _classes(ds)
    if classes is not None and not set(classes) & set(names):
        return _no_class_of(key, key, classes, path, names)
    wanted = {c.get('id') for c in categories if classes is None or c.get('name') in classes}
    if any(a.get('category_id') in wanted for a in data.get('annotations') or []):
        return None
    return (f'{key}: no image of {path} has an annotation of the classes '
            f'{tuple(classes or names)}, and images without annotations are filtered out '
            f'(filter_cfg.filter_empty_gt)')


def explain_data_error(cfg: Config, phase: str, err: BaseException) -> Optional[str]:
    """One line naming the file at fault for a library error raised while ``phase`` reads
    its datasets, or None; files are parsed only on failure."""
    if isinstance(err, json.JSONDecodeError):
        for path, kind, _ in dataset_requirements(cfg, phase)[0]:
            if kind == 'file' and path.endswith('.json') and osp.isfile(path):
                problem = read_json(path)[1]
                if problem:
                    return problem
    if isinstance(err, ValueError) and 'need at least one array to concatenate' in str(err):
        leaves = [(k, ds) for k, ds in _loader_datasets(cfg, phase) if _is_leaf(ds)]
        for key, ds in leaves:
            why = _why_empty(key, ds)
            if why:
                return f'a {phase} dataset is empty: {why}'
        return (f'a {phase} dataset is empty: no sample found under '
                + '; '.join(f'{k} (data_root={ds.get("data_root")!r}, '
                            f'data_prefix={dict(ds.get("data_prefix") or {})!r})'
                            for k, ds in leaves))
    return None


def _no_metrics(cfg: Config) -> None:
    evaluator = cfg.get('test_evaluator') or {}
    evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    types = [e.get('type') for e in evaluators if isinstance(e, dict)]
    why = ''
    if any(isinstance(t, str) and 'Coco' in t for t in types):
        test_cfg = (cfg.get('model') or {}).get('test_cfg') or {}
        thr = test_cfg.get('score_thr', (test_cfg.get('rcnn') or {}).get('score_thr'))
        why = (f': the model made no detection on the test set (CocoMetric: "the testing '
               f'results of the whole dataset is empty"); is the checkpoint trained for this '
               f'config? (model.test_cfg score_thr={thr})')
    raise DataError(f'the test gave no metrics ({", ".join(map(str, types)) or "no evaluator"})'
                    f'{why}')


def check_test_metrics(cfg: Config, metrics: Optional[dict]) -> None:
    """A test with no metrics (a model without detections) or an overall COCO mAP of -1 (no
    ground truth of the evaluated classes) is an error, not a result."""
    if not metrics:
        _no_metrics(cfg)
    # Only the overall figures: bbox_mAP_l is -1 on a set without large objects, rightly.
    undefined = sorted(k for k, v in (metrics or {}).items()
                       if k.split('/')[-1] in ('mAP', 'bbox_mAP', 'segm_mAP')
                       and isinstance(v, (int, float)) and v == -1)
    if not undefined:
        return
    evaluator = cfg.get('test_evaluator') or {}
    ann = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    ann = ann or _join(dataset.get('data_root'), dataset.get('ann_file') or '')
    raise DataError(f'{", ".join(undefined)} = -1 (undefined): the test annotations {ann} '
                    f'hold no ground truth of the classes {tuple(_classes(dataset) or ())}; '
                    f'check test_evaluator.ann_file and the dataset\'s metainfo.classes')
