"""Fresh installs for the packaging tests: a copy of the checkout as a clone has it, a venv
that reuses this environment's packages, pip without the network, scripts run outside."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import textwrap

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def checkout_copy(dst: str) -> str:
    """The files a fresh clone of this working tree has (tracked or not ignored), symlinks
    kept as symlinks; builds then leave nothing in the real checkout."""
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src, out = osp.join(ROOT, name), osp.join(dst, name)
        if not osp.lexists(src):
            continue  # deleted in the working tree
        os.makedirs(osp.dirname(out), exist_ok=True)
        if osp.islink(src):
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)
    return dst


def make_venv(path: str) -> str:
    """A venv whose own site-packages comes first, then this interpreter's (torch, mmdet...):
    ``--system-site-packages`` would reach the base interpreter's, not this venv's."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', path], check=True)
    python = osp.join(path, 'bin', 'python')
    purelib = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
                              '["purelib"])'], capture_output=True, text=True,
                             check=True).stdout.strip()
    with open(osp.join(purelib, '_reuse_dependencies.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return python


def pip_install(python: str, *args: str) -> None:
    # --ignore-installed: never touch the metaformer_mm of the environment being reused
    result = subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '--no-index',
                             '--no-build-isolation', '--ignore-installed', '-q', *args],
                            capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONWARNINGS'] = 'ignore'
    return env


def run_outside(python: str, cwd: str, script: str) -> str:
    os.makedirs(cwd, exist_ok=True)
    result = subprocess.run([python, '-c', textwrap.dedent(script)], cwd=cwd,
                            capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
