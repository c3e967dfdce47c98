"""Installs metaformer_mm, the MetaFormer backbones plugin for mmdet 3.x and mmseg 1.x.

The configs and the model index travel inside the package as ``metaformer_mm/.mim/`` (where
mmengine and mim look for ``metaformer_mm::...`` configs): in a checkout and in editable
installs that folder holds two committed symlinks to ``configs/`` and ``model-index.yml``; a
wheel (built from the checkout or from an sdist) gets real copies, made by ``build_py`` below.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
# What goes into metaformer_mm/.mim of a wheel: source (relative to HERE) -> name in .mim.
# mim runs .mim/tools/train.py and test.py (`mim train/test/run metaformer_mm ...`).
MIM_FILES = {'configs': 'configs', 'model-index.yml': 'model-index.yml', 'tools': 'tools'}
# Installed into site-packages: runs metaformer_mm/startup.py at interpreter start, found
# without importing the package (torch), so that mmengine and mim know it in a fresh
# interpreter (see that file). A .pth line that starts with "import" is executed.
STARTUP_PTH = ('metaformer_mm-startup.pth',
               "import importlib.util as u, os.path as p; s = u.find_spec('metaformer_mm'); "
               "f = s and s.origin and p.join(p.dirname(s.origin), 'startup.py'); "
               "f and p.isfile(f) and exec(compile(open(f).read(), f, 'exec'), "
               "{'__name__': 'metaformer_mm_startup'})\n")


def read_version_field(name: str) -> str:
    """Reads ``name`` from the package's version.py without importing it (torch may be absent)."""
    for line in (HERE / 'metaformer_mm' / 'version.py').read_text().splitlines():
        if line.startswith(name):
            return line.split('=')[1].strip().strip('\'"')
    raise RuntimeError(f'metaformer_mm/version.py has no {name}')


class BuildPyWithMim(build_py):
    """``build_py`` that also copies the configs and the model index into ``.mim``.

    Editable installs (PEP 660) map the package to the checkout, whose committed ``.mim``
    links already point at the live files, so nothing is copied then.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        (Path(self.build_lib) / STARTUP_PTH[0]).write_text(STARTUP_PTH[1])
        target = Path(self.build_lib) / 'metaformer_mm' / '.mim'
        if target.is_symlink() or target.is_file():
            target.unlink()
        shutil.rmtree(target, ignore_errors=True)  # no stale files from an earlier build
        target.mkdir(parents=True)
        for src, dst in MIM_FILES.items():
            path = HERE / src
            if not path.exists():
                raise FileNotFoundError(f'{path} is missing: the wheel would have no {src}')
            if path.is_dir():
                shutil.copytree(path, target / dst, symlinks=False, ignore=shutil.ignore_patterns(
                    '__pycache__', '*.pyc', 'ci'))
            else:
                shutil.copyfile(path, target / dst)


class EditableWheelWithStartup(editable_wheel):
    """PEP 660 editable wheel that also installs the start-up ``.pth`` (its files in the
    unpacked folder go into the wheel; the package itself stays in the checkout)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        (Path(unpacked_wheel) / STARTUP_PTH[0]).write_text(STARTUP_PTH[1])
        return outputs


setup(
    name='metaformer_mm',
    version=read_version_field('__version__'),
    description='MetaFormer (PoolFormer, sMLPNet, ConvFormer, CAFormer) backbones for mmdet 3.x and mmseg 1.x',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    # The project has no repository of its own yet: the home page is the MetaFormer models'.
    url='https://github.com/sail-sg/metaformer',
    author='The metaformer_mm authors',
    author_email='metaformer-mm@users.noreply.github.com',
    keywords='computer vision, object detection, semantic segmentation, MetaFormer, PoolFormer',
    python_requires='>=3.8',
    packages=find_packages(include=['metaformer_mm', 'metaformer_mm.*']),
    cmdclass={'build_py': BuildPyWithMim,
              'editable_wheel': EditableWheelWithStartup},
    install_requires=[
        f"torch>={read_version_field('TORCH_MIN')}",
        'mmengine>=0.10.0,<1.0',
        'mmcv>=2.0.0,<2.2.0',
        'numpy',
        'safetensors',  # timm's weights on the Hugging Face Hub
    ],
    extras_require={
        # mmdet and mmseg are both optional at import time: a user of one needs only that one.
        'det': ['mmdet>=3.0.0,<3.4.0', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0.0,<1.3.0', 'ftfy', 'regex'],
        'tests': ['pytest>=7', 'pytest-timeout', 'onnx', 'onnxruntime', 'matplotlib'],
        'bench': ['onnx', 'onnxruntime'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
