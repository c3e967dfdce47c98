"""Checkpoints the tools read (``tools/test.py``'s, strictly; ``--resume``'s) and the work dir
they write to (writable, one training run at a time)."""
import copy
import datetime
import os
import os.path as osp
import re
import socket
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger

from .config import ToolError, unwritable


def load_test_checkpoint(path: str) -> Tuple[Dict, Dict]:
    """``tools/test.py``'s checkpoint: its state dict and ``dataset_meta``; a released
    backbone layout is converted by the backbone's own load."""
    from ..checkpoint import detector_dataset_meta, extract_state_dict, read_checkpoint
    raw = read_checkpoint(path)
    return extract_state_dict(raw, path), detector_dataset_meta(raw)


def load_state_into_runner(runner: Any, state: Dict, dataset_meta: Dict) -> None:
    """Loads ``state`` into the Runner's model strictly (another config's is an error)."""
    from ..checkpoint import CheckpointError
    from ..engine.guard import runner_model
    model = runner_model(runner)
    try:
        # strict=False only to word the error: any missing or unexpected key is refused below.
        result = model.load_state_dict(state, strict=False)
    except CheckpointError:  # the backbone's own check, which names the file: keep its words
        raise
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


# --------------------------------------------------------------------------- the work dir
TRAIN_LOCK = '.train.lock'
_held_locks: Dict[str, Any] = {}  # work dir -> its open lock file, held until the process ends


def _rank() -> str:
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0'))


def prepare_work_dir(work_dir: str, lock: bool = False) -> None:
    """Creates ``work_dir`` and checks it is writable; with ``lock`` (``tools/train.py``, rank
    0) refuses a second training run there, naming the first. The lock is an ``flock`` on
    ``.train.lock``, released by the OS however the run ends."""
    why = unwritable(work_dir)
    if why:
        raise ToolError(f'work dir {work_dir} is not writable ({why}); give a writable --work-dir')
    if not lock or _rank() != '0' or osp.realpath(work_dir) in _held_locks:
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        MMLogger.get_current_instance().warning(
            f'cannot lock {work_dir} on this platform: run one training per work dir')
        return
    path = osp.join(work_dir, TRAIN_LOCK)
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'a process that has not yet said which'
        handle.close()
        raise ToolError(f'work dir {work_dir} is in use by another training run ({holder}); '
                        f'two runs in one work dir would overwrite each other\'s checkpoints '
                        f'and logs: give this one another --work-dir, or wait until that run '
                        f'ends (the lock, {path}, goes with its process)') from None
    since = datetime.datetime.now().isoformat(timespec='seconds')
    try:  # who holds it, for the message of a refused run; the lock itself is the flock
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {socket.gethostname()}, since {since}\n')
        handle.flush()
    except OSError:  # a full disk: the run finds out at its first write
        pass
    _held_locks[osp.realpath(work_dir)] = handle


def last_checkpoint_kept(work_dir: str) -> str:
    """What a run that failed to write leaves to resume from, in words."""
    path, _ = find_resume_checkpoint(work_dir)
    return (f'the last complete checkpoint, {path}, is kept (resume with --resume)' if path
            else f'no checkpoint was written in {work_dir}')


# --------------------------------------------------------------------------- --resume
# The temporary files of checkpoint.atomic_write: '.<name>.<8 hex digits>.tmp'.
_INTERRUPTED_WRITE = re.compile(r'^\..+\.[0-9a-f]{8}\.tmp$')
# CheckpointHook's default file names.
_CHECKPOINT_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')
RESUME_LATEST = 'latest'  # --resume without a value
RESUME_AUTO = 'auto'  # --resume auto


def remove_interrupted_writes(work_dir: str) -> List[str]:
    """Deletes the temporary files a killed checkpoint write left in ``work_dir``."""
    if not osp.isdir(work_dir) or _rank() != '0':
        return []  # other ranks start at other times: only rank 0 tidies up
    removed = []
    for name in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, name)
        if _INTERRUPTED_WRITE.match(name) and osp.isfile(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        MMLogger.get_current_instance().info(
            f'removed {len(removed)} temporary file(s) of an interrupted checkpoint write: '
            + ', '.join(removed))
    return removed


def _loadable(path: str) -> bool:
    """Whether ``path`` is a complete torch zip checkpoint (a truncated one has no zip
    directory), reading only the directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith('/data.pkl') or n == 'data.pkl' for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _candidates(directories: List[str]) -> List[str]:
    """Checkpoints named like CheckpointHook's (iter_N.pth, epoch_N.pth), newest first."""
    found = {}
    for directory in directories:
        if not osp.isdir(directory):
            continue
        for name in os.listdir(directory):
            match = _CHECKPOINT_NAME.match(name)
            path = osp.join(directory, name)
            if match and osp.isfile(path):
                found[osp.realpath(path)] = (int(match.group(1)), osp.getmtime(path), path)
    return [path for *_, path in sorted(found.values(), reverse=True)]


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str], str]:
    """The checkpoint ``--resume`` continues from, and what was found when there is none:
    ``last_checkpoint``'s, else (logged) the newest complete ``iter_N``/``epoch_N.pth`` of the
    work dir or of the directory it names."""
    logger = MMLogger.get_current_instance()
    pointer = osp.join(work_dir, 'last_checkpoint')
    named, readable = '', True
    if osp.isfile(pointer):
        with open(pointer, 'rb') as f:
            raw = f.read(4097)
        try:
            named = raw.decode('utf-8').strip()
        except UnicodeDecodeError:
            readable = False
        # A path is one line of text; anything else (random bytes, a long file) is not one.
        if not readable or len(raw) > 4096 or '\n' in named or '\x00' in named:
            named, readable = '', False
    if named and osp.isfile(named) and _loadable(named):
        return named, ''
    if not osp.isfile(pointer):
        state = f'{pointer} does not exist'
    elif not readable:
        state = f'{pointer} does not hold a path (binary or corrupt content)'
    elif not named:
        state = f'{pointer} is empty'
    elif not osp.isfile(named):
        state = f'{pointer} names {named}, which does not exist'
    else:
        state = f'{pointer} names {named}, which is incomplete or not a checkpoint'
    directories = [work_dir] + ([osp.dirname(named)] if named and osp.dirname(named) else [])
    for path in _candidates(directories):
        if _loadable(path):
            logger.warning(f'--resume: {state}; resuming from the newest complete checkpoint '
                           f'found, {path}')
            return path, state
        logger.warning(f'--resume: skipping {path}, which is incomplete or not a checkpoint')
    return None, state


def check_resumable(path: str) -> None:
    """Refuses a ``--resume`` file without the training state ``Runner.resume`` reads
    (``meta['epoch']``, ``meta['iter']``, ``message_hub``)."""
    from ..checkpoint import read_checkpoint
    obj = read_checkpoint(path)
    meta = obj.get('meta') if isinstance(obj, dict) else None
    lacking = [what for what, present in (
        ("meta['epoch']", isinstance(meta, dict) and 'epoch' in meta),
        ("meta['iter']", isinstance(meta, dict) and 'iter' in meta),
        ("'message_hub'", isinstance(obj, dict) and 'message_hub' in obj)) if not present]
    if lacking:
        raise ToolError(
            f'--resume: {path} holds no training state to resume (no {", ".join(lacking)}: '
            f'a weights-only file, not a checkpoint a training run wrote). To start training '
            f'from its weights, use --cfg-options load_from={path} instead of --resume')


def resolve_resume(cfg: Config, resume: Optional[str]) -> None:
    """Sets ``cfg.resume``/``cfg.load_from`` for ``--resume``: None, a path,
    :data:`RESUME_LATEST` (an error without a checkpoint) or :data:`RESUME_AUTO` (from scratch
    without one)."""
    if not resume:
        return
    if resume not in (RESUME_LATEST, RESUME_AUTO):
        if osp.isdir(resume):
            raise ToolError(f'--resume: {resume} is a directory, not a checkpoint file (give '
                            f'the file, or --resume alone for the latest of the work dir)')
        if not osp.isfile(resume):
            raise ToolError(f'--resume: checkpoint not found: {resume}')
        check_resumable(resume)
        cfg.resume, cfg.load_from = True, resume
        return
    path, state = find_resume_checkpoint(cfg.work_dir)
    if path:
        cfg.resume, cfg.load_from = True, path
        return
    if resume == RESUME_AUTO:
        MMLogger.get_current_instance().info(
            f'--resume auto: no checkpoint to resume from in {cfg.work_dir} ({state}); '
            f'training from scratch')
        cfg.resume, cfg.load_from = False, None
        return
    raise ToolError(f'--resume: no checkpoint to resume from in {cfg.work_dir} ({state}, and '
                    f'no complete iter_N.pth or epoch_N.pth there); run without --resume to '
                    f'train from scratch, or with --resume auto to resume only when there is '
                    f'a checkpoint')
