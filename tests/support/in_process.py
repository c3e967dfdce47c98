"""Runs a repo script's ``main(argv)`` in the test's own process, as ``python SCRIPT ARGV`` would
run it, without paying a fresh interpreter's torch/mmdet/mmseg imports. For what a test asserts
on a tool's output, exit status and files; tests of the process itself (signals, launchers,
fresh interpreters, uncaught errors) keep their subprocesses."""
import contextlib
import importlib.util
import io
import logging
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def script(relpath: str):
    """The repo script ``relpath`` (tools/..., demo/...) imported as a module, once; its folder
    is on sys.path, as Python puts it there for ``python SCRIPT``."""
    name = 'script_' + relpath.replace('/', '_').replace('.py', '')
    if name not in sys.modules:
        path = osp.join(ROOT, relpath)
        folder = osp.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def exits_with_main(relpath: str) -> bool:
    """Whether the script's ``__main__`` block exits with what main returns."""
    with open(osp.join(ROOT, relpath)) as f:
        return 'sys.exit(main())' in f.read()


def _managers() -> list:
    """Every mmengine ManagerMixin class (MMLogger, Visualizer and its subclasses, MessageHub,
    DefaultScope): what a process holds as its current logger, visualizer, scope."""
    from mmengine.utils import ManagerMixin
    found, todo = [], [ManagerMixin]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if '_instance_dict' in vars(cls):
            found.append(cls)
    return found


def run_main(relpath: str, *args, env: Optional[Dict[str, str]] = None,
             cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """``script(relpath).main(args)`` with what it prints to sys.stdout / sys.stderr captured and
    the exit status the interpreter would give: what main returns where the script ends in
    ``sys.exit(main())``, else 0, or the ``sys.exit`` code; a ``sys.exit(message)`` prints the
    message to stderr and is status 1. ``env`` is added to os.environ and ``cwd`` entered for
    the call only. An uncaught exception propagates (fails the test) instead of becoming a
    traceback on stderr."""
    from metaformer_mm.cli import checkpoints
    main = script(relpath).main
    locks = set(checkpoints._held_locks)
    # As in a fresh process, no logger, visualizer, message hub or default scope exists yet:
    # the run makes its own (printing to the captured streams); the test's come back after.
    instances = {cls: dict(cls._instance_dict) for cls in _managers()}
    for cls in instances:
        cls._instance_dict.clear()
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    os.environ.update(env or {})
    sys.argv = [osp.join(ROOT, relpath), *argv]
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returned = main(argv)
                code = returned if exits_with_main(relpath) else 0
            except SystemExit as exit_:
                code = exit_.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
    finally:
        # What goes with a process: its work-dir locks are released, its loggers, visualizers,
        # message hubs and default scopes dropped, their log files closed (a work dir can be
        # unmounted or locked again).
        for work_dir in set(checkpoints._held_locks) - locks:
            checkpoints._held_locks.pop(work_dir).close()
        for cls in _managers():
            for instance in cls._instance_dict.values():
                for handler in [h for h in getattr(instance, 'handlers', [])
                                if isinstance(h, logging.FileHandler)]:
                    instance.removeHandler(handler)
                    handler.close()
            cls._instance_dict.clear()
            cls._instance_dict.update(instances.get(cls, {}))
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([sys.executable, relpath, *argv], code or 0,
                                       out.getvalue(), err.getvalue())
