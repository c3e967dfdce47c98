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

HERE = Path(__file__).parent
# What goes into metaformer_mm/.mim of a wheel: source (relative to HERE) -> name in .mim.
MIM_FILES = {'configs': 'configs', 'model-index.yml': 'model-index.yml'}


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
                shutil.copytree(path, target / dst,
                                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                shutil.copyfile(path, target / dst)


setup(
    name='metaformer_mm',
    version=read_version_field('__version__'),
    description='MetaFormer (PoolFormer, sMLPNet, ConvFormer, CAFormer) backbones for mmdet 3.x and mmseg 1.x',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['metaformer_mm', 'metaformer_mm.*']),
    cmdclass={'build_py': BuildPyWithMim},
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
