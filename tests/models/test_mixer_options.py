"""Backbone arguments that set an option of every token mixer of one kind (``MIXER_OPTIONS``):
each default lives once, in the preset table and the mixer; an option that no mixer of the
model takes is refused, naming it."""
import pytest

from metaformer_mm.models.backbones import PoolFormer, RandFormer, SMLPNet
from metaformer_mm.models.checks import ArgumentError
from metaformer_mm.models.mixers import SMLP
from metaformer_mm.models.random_mixing import RandomMixing

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 8, 8, 8])


def _mixers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_image_size_and_max_matrix_mb_reach_every_random_mixer():
    default = RandFormer(arch=dict(TINY, base='randformer_s12'))
    assert {m.image_size for m in _mixers(default, RandomMixing)} == {(224, 224)}
    model = RandFormer(arch=dict(TINY, base='randformer_s12'), image_size=(64, 96),
                       max_matrix_mb=2)
    mixers = _mixers(model, RandomMixing)
    assert len(mixers) == 2
    assert all(m.image_size == (64, 96) and m.max_matrix_mb == 2 for m in mixers)


def test_image_size_and_resize_mode_reach_the_smlp_mixers_of_a_hybrid():
    model = PoolFormer(arch=dict(TINY, base='poolformer_s12'),
                       token_mixers=['pooling', 'pooling', 'smlp', 'smlp'], image_size=64,
                       resize_mode='window')
    mixers = _mixers(model, SMLP)
    assert [m.native_size for m in mixers] == [4, 2]
    assert {m.resize_mode for m in mixers} == {'window'}
    assert SMLPNet(arch=dict(TINY, base='smlpnet_tiny')).stages[0].blocks[0] \
        .token_mixer.native_size == 56  # the table's image_size=224


@pytest.mark.parametrize('cls, arch, option', [
    (PoolFormer, 'poolformer_s12', dict(image_size=224)),
    (SMLPNet, 'smlpnet_tiny', dict(max_matrix_mb=8)),
    (RandFormer, 'randformer_s12', dict(pool_size=5)),
])
def test_an_option_no_mixer_takes_is_refused(cls, arch, option):
    (name, _), = option.items()
    with pytest.raises(ArgumentError, match=rf'{cls.__name__}: {name} is an option of the '
                                            rf'.* token mixers, and this model has none'):
        cls(arch=dict(TINY, base=arch), **option)
