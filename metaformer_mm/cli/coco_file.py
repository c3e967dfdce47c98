"""Checks of a COCO annotation file before mmdet or pycocotools read it: entry types (errors
name the file and entry) and the boxes ``CocoDataset`` would skip (one warning)."""
import json
import math
from typing import Any, Dict, List, Optional, Tuple

from mmengine.logging import MMLogger

from ..datasets.transforms import DataError
from ..models.checks import is_int


def read_json(path: str) -> Tuple[Optional[dict], str]:
    """The parsed JSON file, or None and a message naming the file and what is wrong."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f), ''
    except json.JSONDecodeError as err:
        return None, (f'annotation file {path} is not valid JSON ({err.msg} at line '
                      f'{err.lineno} column {err.colno}; is it truncated?)')
    except (OSError, UnicodeDecodeError) as err:
        return None, f'annotation file {path} cannot be read ({err})'


def read_coco_categories(path: str, key: str, warn_dropped: bool) -> Optional[List[str]]:
    """The category names of the COCO file ``path``, its types checked (None for another
    JSON format)."""
    data, problem = read_json(path)
    if data is None:
        raise DataError(problem)
    if not (isinstance(data, dict) and set(data) & {'images', 'annotations', 'categories'}):
        if isinstance(data, dict) or not isinstance(data, list):
            return None
        raise DataError(f'annotation file {path} ({key}): the top level is a list, not a COCO '
                        f'dict of "images", "annotations" and "categories"')
    why = coco_problem(data)
    if why:
        raise DataError(f'annotation file {path} ({key}): {why}')
    if warn_dropped:
        _log_dropped_boxes(path, data)
    return [c['name'] for c in data.get('categories') or []]


def _shown(value: Any) -> str:
    text = repr(value)
    return f'{type(value).__name__} {text[:60]}{"..." if len(text) > 60 else ""}'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# COCO's ids are integers; mmdet skips an annotation whose category_id is not one of the
# file's category ids, so a string one would be dropped without a word.
_is_id = is_int


def _image_problem(image: dict) -> Optional[str]:
    if not _is_id(image.get('id')):
        return f'"id" must be an integer, got {_shown(image.get("id"))}'
    if not isinstance(image.get('file_name'), str):
        return f'"file_name" must be a string, got {_shown(image.get("file_name"))}'
    for side in ('width', 'height'):
        if not (_is_number(image.get(side)) and image[side] > 0):
            return f'"{side}" must be a positive number of pixels, got {_shown(image.get(side))}'
    return None


def _annotation_problem(ann: dict) -> Optional[str]:
    for name in ('id', 'image_id', 'category_id'):
        if not _is_id(ann.get(name)):
            return f'"{name}" must be an integer, got {_shown(ann.get(name))}'
    bbox = ann.get('bbox')
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f'"bbox" must be a list of 4 numbers [x, y, width, height], got {_shown(bbox)}'
    if not _is_number(ann.get('area')):
        return f'"area" must be a number, got {_shown(ann.get("area"))}'
    if 'iscrowd' in ann and not isinstance(ann['iscrowd'], (int, bool)):
        return f'"iscrowd" must be 0 or 1, got {_shown(ann["iscrowd"])}'
    segmentation = ann.get('segmentation')
    if segmentation is not None and not isinstance(segmentation, (list, dict)):
        return (f'"segmentation" must be a list of polygons or an RLE dict, got '
                f'{_shown(segmentation)}')
    return None


def _category_problem(category: dict) -> Optional[str]:
    if not _is_id(category.get('id')):
        return f'"id" must be an integer, got {_shown(category.get("id"))}'
    if not isinstance(category.get('name'), str):
        return f'"name" must be a string, got {_shown(category.get("name"))}'
    return None


_ENTRY_CHECKS = {'images': _image_problem, 'annotations': _annotation_problem,
                 'categories': _category_problem}


def coco_problem(data: dict) -> Optional[str]:
    """The first field or entry of a parsed COCO file mmdet could not read, or None."""
    for field, check in _ENTRY_CHECKS.items():
        if field not in data:
            continue  # pycocotools reads files without them; emptiness is explained later
        if not isinstance(data[field], list):
            return f'"{field}" must be a list, got {_shown(data[field])}'
        for i, entry in enumerate(data[field]):
            why = check(entry) if isinstance(entry, dict) else \
                f'must be a dict, got {_shown(entry)}'
            if why:
                ident = f' (id {entry["id"]!r})' if isinstance(entry, dict) and \
                    _is_id(entry.get('id')) else ''
                return f'{field}[{i}]{ident}: {why}'
    return None


def _log_dropped_boxes(path: str, data: dict) -> None:
    """Logs once how many boxes mmdet's ``CocoDataset.parse_data_info`` skips, and why."""
    sizes = {im['id']: (im['width'], im['height']) for im in data.get('images') or []}
    category_ids = {c['id'] for c in data.get('categories') or []}
    reasons: Dict[str, int] = {}
    first = None
    annotations = [a for a in data.get('annotations') or [] if not a.get('ignore', False)]
    for i, ann in enumerate(annotations):
        x, y, w, h = ann['bbox']
        width, height = sizes.get(ann['image_id'], (float('inf'), float('inf')))
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            why = 'a nan/inf coordinate'
        elif w < 1 or h < 1:
            why = 'a negative or under 1 px width/height'
        elif min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0):
            why = 'no overlap with its image'
        elif ann['area'] <= 0:
            why = 'an area <= 0'
        elif ann['category_id'] not in category_ids:
            why = 'a category_id that is no category of the file'
        else:
            continue
        reasons[why] = reasons.get(why, 0) + 1
        first = first or f'annotations id {ann["id"]!r}: bbox {ann["bbox"]}'
    if reasons:
        MMLogger.get_current_instance().warning(
            f'annotation file {path}: {sum(reasons.values())} of {len(annotations)} boxes are '
            f'skipped by mmdet\'s CocoDataset: '
            + ', '.join(f'{n} with {why}' for why, n in reasons.items()) + f' (first: {first})')
