"""``CheckedCompose``: a data pipeline whose errors name the file being read.

Transforms fail with the library's words only (a zero-byte image: ``cv2.error: ...
!buf.empty()``); ``CheckedCompose(transforms=[...])`` turns such a failure into one
:class:`DataError` naming the file, its size and the transform. The tools wrap every
pipeline in it (``cli.datasets.name_files_in_errors``)."""
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

from mmengine.dataset import Compose
from mmengine.registry import TRANSFORMS


class DataError(ValueError):
    """A sample of a dataset cannot be read or prepared; the message names the file."""


def _one_line(err: BaseException) -> str:
    kind = type(err)
    name = kind.__name__ if kind.__module__ == 'builtins' else f'{kind.__module__}.{kind.__name__}'
    text = ' '.join(line.strip() for line in str(err).splitlines() if line.strip())
    return f'{name}: {text}' if text else name


def _describe(results: Dict, transform: Any, err: BaseException) -> str:
    path = results.get('img_path') or results.get('seg_map_path') or '<sample without a path>'
    if isinstance(path, str) and osp.isfile(path) and osp.getsize(path) == 0:
        return f'image file {path} is empty (0 bytes)'
    shape = results.get('ori_shape') or results.get('img_shape')
    size = f' ({shape[1]}x{shape[0]} pixels)' if shape and len(shape) >= 2 else ''
    return f'{path}{size}: {type(transform).__name__} failed: {_one_line(err)}'


@TRANSFORMS.register_module()
class CheckedCompose:
    """mmengine's ``Compose``; a transform's error becomes a :class:`DataError` naming the file."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms: List[Any] = Compose(list(transforms)).transforms

    def __call__(self, results: Dict) -> Optional[Dict]:
        for transform in self.transforms:
            try:
                out = transform(results)
            except DataError:
                raise
            except Exception as err:  # noqa: BLE001  (any library error, reworded)
                raise DataError(_describe(results, transform, err)) from err
            if out is None:  # a transform that drops the sample (mmdet's convention)
                return None
            results = out
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transforms!r})'
