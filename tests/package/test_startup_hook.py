"""The start-up ``.pth`` line that setup.py installs: in a fresh interpreter it imports
neither torch nor the package, lists ``metaformer_mm`` in mmengine's ``MODULE2PACKAGE`` once
mmengine's config module loads, and stays silent where the package found has no hook."""
import ast
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _startup_pth() -> tuple:
    """(file name, line) of ``STARTUP_PTH`` in setup.py, read without running setup()."""
    tree = ast.parse(open(osp.join(ROOT, 'setup.py')).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == 'STARTUP_PTH':
            return ast.literal_eval(node.value)
    raise AssertionError('setup.py defines no STARTUP_PTH')


def _run_with_pth(tmp_path, script: str, pythonpath: str) -> subprocess.CompletedProcess:
    name, line = _startup_pth()
    site_dir = tmp_path / 'site'
    site_dir.mkdir()
    (site_dir / name).write_text(line)
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONWARNINGS='ignore')
    code = f'import site; site.addsitedir({str(site_dir)!r})\n' + script
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path))


def test_startup_hook_lists_the_package_for_mmengine_without_importing_it(tmp_path):
    result = _run_with_pth(tmp_path, (
        "import sys\n"
        "print('before', sorted({'torch', 'mmengine', 'metaformer_mm'} & set(sys.modules)))\n"
        "from mmengine.config import utils\n"
        "print('entry', utils.MODULE2PACKAGE.get('metaformer_mm'))\n"
        "print('imported', 'metaformer_mm' in sys.modules)\n"), pythonpath=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'before []' in result.stdout
    assert 'entry metaformer_mm.zoo' in result.stdout and 'imported False' in result.stdout
    assert result.stderr == ''


def test_startup_hook_is_silent_where_the_package_found_has_no_hook(tmp_path):
    # e.g. an older metaformer_mm first on the path, without startup.py
    old = tmp_path / 'old' / 'metaformer_mm'
    old.mkdir(parents=True)
    (old / '__init__.py').write_text('')
    result = _run_with_pth(tmp_path, "print('started')\n", pythonpath=str(old.parent))
    assert result.returncode == 0 and result.stdout == 'started\n' and result.stderr == ''
