"""Config handling of the tools (reading, default scope, test-only configs, neck wiring) and
:class:`ToolError`, their user-facing error (one ``error:`` line)."""
import copy
import errno
import inspect
import os
import os.path as osp
import re
import stat
import tempfile
from typing import Any, Dict, Optional, Sequence, Union

from mmengine.config import Config

from ..models.checks import is_int

SCOPES = ('mmdet', 'mmseg')


class ToolError(RuntimeError):
    """A user-facing error of the tools (bad checkpoint path, unknown scope, ...)."""


class ConfigNotFoundError(ToolError, FileNotFoundError):
    """Neither a config file nor a model name; the message lists the closest names."""


def read_config(config: Union[str, Config]) -> Config:
    """The config a tool was given: a file, a model name or alias, ``metaformer_mm::REL_PATH``,
    or an ``mmdet::``/``mmseg::`` config."""
    from ..zoo import PACKAGE_PREFIX, resolve_config
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if '::' in config and not config.startswith(PACKAGE_PREFIX):
        # mmengine's Config.fromfile takes other packages' configs only as a _base_.
        with tempfile.TemporaryDirectory() as tmp:
            wrapper = osp.join(tmp, 'wrapper.py')
            with open(wrapper, 'w') as f:
                f.write(f'_base_ = [{config!r}]\n')
            return Config.fromfile(wrapper)
    try:
        return Config.fromfile(resolve_config(config))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigNotFoundError(str(err).replace('config: ', 'config ', 1)) from None


def load_config(config: Union[str, Config], cfg_options: Optional[Dict] = None) -> Config:
    """Reads a config, merges ``--cfg-options`` and sets its default scope."""
    cfg = read_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.default_scope = default_scope(cfg)
    return cfg


def default_scope(cfg: Config) -> str:
    """'mmdet' or 'mmseg': the config's ``default_scope``, else guessed from the model."""
    scope = cfg.get('default_scope')
    if scope is None:
        model = cfg.get('model') or {}
        scope = 'mmseg' if 'decode_head' in model else 'mmdet'
    if scope not in SCOPES:
        raise ToolError(f'default_scope {scope!r} is not supported by these tools; '
                        f'expected one of {SCOPES}')
    return scope


def drop_training(cfg: Config) -> None:
    """Removes the training parts of a config that only tests: otherwise some hooks build
    the training loop just to read its length (mmseg's SegVisualizationHook), reading the
    training split."""
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None


def check_train_schedule(cfg: Config) -> None:
    """``train_cfg.max_iters``/``max_epochs`` are positive integers (``-5`` would train
    nothing and exit 0)."""
    train_cfg = cfg.get('train_cfg') or {}
    for key in ('max_iters', 'max_epochs'):
        value = train_cfg.get(key)
        if key in train_cfg and not (is_int(value) and value > 0):
            raise ToolError(f'train_cfg.{key} must be a positive integer, got {value!r} '
                            f'(nothing would be trained)')


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config name>``, mmdet's convention."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def output_file(path: str, option: str, overwrite: bool = True,
                suffixes: Optional[Sequence[str]] = None) -> str:
    """The file a tool writes for ``option``, checked before any work: the path its data goes
    to (a link's target), in a directory that exists (made) and takes a file. Refused: a
    directory, a non-regular file, an existing file without ``overwrite``, a name without one of
    ``suffixes``, an unwritable directory."""
    target = osp.realpath(path)
    shown = path if target == osp.abspath(path) else f'{path} (a link to {target})'
    if suffixes and not target.lower().endswith(tuple(suffixes)):
        raise ToolError(f'{option} {shown}: the name must end with one of {list(suffixes)}')
    if osp.isdir(target):
        raise ToolError(f'{option} {shown} is a directory; give a file name in it, e.g. '
                        f'{osp.join(path, "out" + (suffixes[0] if suffixes else ""))}')
    if osp.exists(target):
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise ToolError(f'{option} {shown} is not a regular file (a device, pipe or '
                            f'socket); give the path of a file to write')
        if not overwrite:
            raise ToolError(f'{option} {shown} exists; give --force to overwrite it')
    directory = osp.dirname(target)
    why = unwritable(directory)
    if why:
        raise ToolError(f'{option} {shown}: cannot write in {directory} ({why})')
    return target


def unwritable(directory: str) -> Optional[str]:
    """Why no file can be written in ``directory`` (created if missing), or None; a real
    write, as permission bits say nothing for root or on a read-only mount."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        return str(err.strerror or err)
    return None


# errno values of a write that failed for want of space or permission, not a bug.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                errno.EPERM}


def write_error(err: OSError) -> Optional[str]:
    """One line for a write that failed for want of space or permission; None for other errors."""
    if err.errno not in WRITE_ERRORS:
        return None
    where = f' {err.filename}' if err.filename else ''
    return f'cannot write{where}: {err.strerror or os.strerror(err.errno)} (errno {err.errno})'


def build_runner(cfg: Config, config_name: str) -> Any:
    """The config's Runner; a config that does not build is a :class:`ToolError` naming it,
    without mmengine's "class `X` in FILE:" prefixes."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    try:
        return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        text = re.sub(r'class `\w+` in [\w./\\-]+\.py: ', '', str(text))
        raise ToolError(f'{config_name}: the model does not build: '
                        f'{type(err).__name__}: {text}') from err


def error_line(err: BaseException) -> str:
    """``err``'s message on one line; of a dataloader worker's "Original Traceback", the
    last line."""
    text = str(err).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]
        text = last.split(': ', 1)[1] if ': ' in last else last
    return ' '.join(text.splitlines())


def check_neck_inputs(cfg: Config) -> None:
    """The backbone gives as many maps as the neck takes (``out_indices`` against
    ``neck.in_channels``), said before training instead of an AssertionError in the FPN."""
    model = cfg.get('model') or {}
    backbone, neck = model.get('backbone') or {}, model.get('neck')
    in_channels = neck.get('in_channels') if isinstance(neck, dict) else None
    if not isinstance(in_channels, (list, tuple)):
        return
    out_indices = backbone.get('out_indices')
    if out_indices is None:  # the backbone's default, where it has one
        default = _default_argument(cfg, backbone.get('type'), 'out_indices')
        if default is None:
            return
        out_indices = default
    out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    if len(out_indices) != len(in_channels):
        raise ToolError(
            f'model.backbone.out_indices {tuple(out_indices)} gives {len(out_indices)} feature '
            f'maps but model.neck.in_channels {list(in_channels)} takes {len(in_channels)}; '
            f'make them agree (one in_channels entry per output stage)')


def _default_argument(cfg: Config, type_name: Any, name: str) -> Any:
    from ..registry import REGISTRIES
    registry = REGISTRIES.get(default_scope(cfg))
    cls = registry.get(type_name) if registry and isinstance(type_name, str) else None
    try:
        parameter = inspect.signature(cls).parameters.get(name) if cls else None
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty \
        else parameter.default
