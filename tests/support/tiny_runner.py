"""The smallest real model and dataset an mmengine Runner trains (a tiny PoolFormer with a
linear head, seeded random images), shared by the runtime and reliability tests."""
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from metaformer_mm.models import PoolFormer

TINY = dict(base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])


class TinyClassifier(BaseModel):
    """``loss_name`` is the key of its one loss term (tests that name loss terms set it)."""

    def __init__(self, loss_name: str = 'loss') -> None:
        super().__init__()
        self.loss_name = loss_name
        self.backbone = PoolFormer(arch=TINY, out_indices=(3,))
        self.head = nn.Linear(32, 3)

    def forward(self, inputs, labels, mode='tensor'):
        logits = self.head(self.backbone(inputs)[0].mean((2, 3)))
        if mode == 'loss':
            return {self.loss_name: nn.functional.cross_entropy(logits, labels)}
        if mode == 'predict':
            return [dict(pred=p, label=t) for p, t in zip(logits.argmax(1), labels)]
        return logits


class RandomImages(Dataset):
    """``size`` 3x32x32 images, each drawn from its own seed, with labels 0..2."""

    def __init__(self, size: int = 8) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 32, 32, generator=g), labels=torch.tensor(i % 3))
