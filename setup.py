"""Installs metaformer_mm, the MetaFormer backbones plugin for mmdet 3.x and mmseg 1.x."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version_field(name: str) -> str:
    """Reads ``name`` from the package's version.py without importing it (torch may be absent)."""
    for line in (HERE / 'metaformer_mm' / 'version.py').read_text().splitlines():
        if line.startswith(name):
            return line.split('=')[1].strip().strip('\'"')
    raise RuntimeError(f'metaformer_mm/version.py has no {name}')


setup(
    name='metaformer_mm',
    version=read_version_field('__version__'),
    description='MetaFormer (PoolFormer, sMLPNet, ConvFormer, CAFormer) backbones for mmdet 3.x and mmseg 1.x',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['metaformer_mm', 'metaformer_mm.*']),
    install_requires=[
        f"torch>={read_version_field('TORCH_MIN')}",
        'mmengine>=0.10.0,<1.0',
        'mmcv>=2.0.0,<2.2.0',
        'numpy',
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
