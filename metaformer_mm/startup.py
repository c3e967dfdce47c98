"""Interpreter start-up hook (``metaformer_mm-startup.pth``, installed by setup.py): OpenMMLab's
clients find this package with no ``import``.

It imports nothing heavy: a ``sys.meta_path`` finder adjusts three modules after their first
import, so that mmengine resolves ``metaformer_mm::`` bases in a fresh interpreter (bases are
read before ``custom_imports``), ``mim`` finds the package under a PEP 660 editable install,
and ``mim download`` writes the config of every index entry, saying where no direct download
of the weights exists. Any failure is swallowed: a start-up hook must never stop Python."""
import importlib.util
import os
import os.path as osp
import sys

PACKAGE = 'metaformer_mm'
# mmengine's get_installed_path asks the distribution for its location first, which is
# site-packages under PEP 660; a module name no distribution has makes it use importlib's
# spec instead, whose folder is the package in every kind of install.
MMENGINE_TARGET = 'metaformer_mm.zoo'


def package_dir() -> str:
    """The folder of the package, found without importing it (no torch at start-up)."""
    spec = importlib.util.find_spec(PACKAGE)
    return osp.dirname(spec.origin) if spec and spec.origin else ''


def register_mmengine(utils) -> None:
    """Adds this package to mmengine's ``MODULE2PACKAGE`` (``mmengine.config.utils``)."""
    utils.MODULE2PACKAGE.setdefault(PACKAGE, MMENGINE_TARGET)


def _patch_mim_utils(utils) -> None:
    installed_path = utils.get_installed_path

    def get_installed_path(package: str) -> str:
        return package_dir() if package == PACKAGE else installed_path(package)

    utils.get_installed_path = get_installed_path


def _download_without_direct_url(names, dest_root) -> None:
    """For index entries without a direct weights URL: writes the config and says where
    the weights are, if anywhere."""
    from mim.utils import DEFAULT_CACHE_DIR, echo_success, echo_warning
    from mmengine.config import Config

    from metaformer_mm import zoo
    dest_root = osp.abspath(dest_root or DEFAULT_CACHE_DIR)
    os.makedirs(dest_root, exist_ok=True)
    for name in names:
        entry = zoo.model_info(name)
        page = entry.get('Download Page')
        echo_warning(f'{name}: no direct download of its weights; ' + (
            f'they are on a Google Drive page, which mim cannot fetch: open {page} in a '
            f'browser and save the file into {dest_root}' if page else
            'no trained checkpoint was released'))
        Config.fromfile(zoo.resolve_config(name)).dump(osp.join(dest_root, f'{name}.py'))
        echo_success(f'Successfully dumped {name}.py to {dest_root}')


def _listing_this_package(list_package):
    """``mim list`` looks for ``<location>/<name>/.mim``: under PEP 660 that is not there."""

    def listed(all: bool = False):
        rows = list_package(all)
        if all or any(row[0].replace('-', '_') == PACKAGE for row in rows) or \
                not osp.isfile(osp.join(package_dir(), '.mim', 'model-index.yml')):
            return rows
        from importlib.metadata import metadata
        meta = metadata(PACKAGE)
        return sorted(rows + [(meta['Name'], meta['Version'], meta['Home-page'])])

    return listed


def _downloading_every_entry(callback):
    """``mim download`` downloads every ``Weights`` URL before writing a config: entries
    without one go through :func:`_download_without_direct_url`."""

    def download(package, configs, dataset=None, dest_root=None, check_certificate=True):
        if package == PACKAGE and configs:
            from metaformer_mm import zoo
            index = zoo.model_index()
            rest = [c for c in configs if c in index and not zoo.model_weights(c)]
            _download_without_direct_url(rest, dest_root)
            configs = [c for c in configs if c not in rest]
            if not configs:
                return None
        return callback(package, configs, dataset, dest_root, check_certificate)

    return download


def _patch_mim_cli(cli) -> None:
    """mim runs each command's file with ``eval``: its functions are patched as they load."""
    get_command = cli.MIM.get_command

    def patched(self, ctx, name):
        command = get_command(self, ctx, name)
        if command is not None and name == 'list':
            names = command.callback.__globals__
            names['list_package'] = _listing_this_package(names['list_package'])
        elif command is not None and name == 'download':
            command.callback = _downloading_every_entry(command.callback)
        return command

    cli.MIM.get_command = patched


AFTER_IMPORT = {'mmengine.config.utils': register_mmengine, 'mim.utils.utils': _patch_mim_utils,
                'mim.cli': _patch_mim_cli}


class _AfterImport:
    """A ``sys.meta_path`` finder: ``AFTER_IMPORT[name](module)`` once ``name`` is executed."""

    def find_spec(self, name, path, target=None):
        if name not in AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            exec_module, hook = spec.loader.exec_module, AFTER_IMPORT[name]

            def exec_and_hook(module):
                exec_module(module)
                try:
                    hook(module)
                except Exception:  # a changed client: it keeps its own behaviour
                    pass

            spec.loader.exec_module = exec_and_hook
        return spec


def install() -> None:
    """Puts the finder first on ``sys.meta_path`` (once); never raises."""
    try:
        if not any(type(f).__name__ == _AfterImport.__name__ for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport())
    except Exception:
        pass


if __name__ == 'metaformer_mm_startup':  # run by the .pth file, not imported
    install()
