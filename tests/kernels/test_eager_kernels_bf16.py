"""The default path under CPU bf16 autocast against the plain formulation under the same
autocast and in fp32: the chunked MLP runs on bf16 operands itself (oneDNN's bf16 GEMMs with
fused epilogues, or aten's), the residual stream keeps autocast's dtype.

bf16 runs on any CPU here (emulated where there are no bf16 units: slow, but the same numbers).
"""
import os.path as osp
import subprocess
import sys
from typing import List

import pytest
import torch
import torch.nn.functional as F

from metaformer_mm.inference import cpu_bf16_flags
from metaformer_mm.accel import chunk_sizes, ops
from metaformer_mm.accel.activations import ACTS
from metaformer_mm.accel.mlp import chunked_mlp, mlp_forward

from kernel_cases import ARCHS, ONEDNN_OP, build, ops_seen, reference_forward

BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _span_error(out, ref) -> float:
    """The largest error of ``out`` over all maps, relative to each reference map's range."""
    return max(float((o.float() - r.float()).abs().max() / (r.float().max() - r.float().min()))
               for o, r in zip(_as_tuple(out), _as_tuple(ref), strict=True))


@pytest.mark.parametrize('kernels', ['auto', 'aten'])
@pytest.mark.parametrize('name', list(ARCHS))
def test_default_path_under_bf16_autocast_equals_plain_formulation(name, kernels):
    model = build(name, kernels=kernels, fork_feat=True, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 64, 72)
    ops.available('onednn_linear_bf16')  # the operator probes, before the profiled call
    with torch.no_grad():
        ref = reference_forward(model, x)
        with torch.autocast(**BF16):
            ref_bf16 = reference_forward(model, x)
            with chunk_sizes(aten_mlp=1000, onednn_mlp=1000), ops_seen() as seen:
                out = model(x)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert all(o.is_contiguous() for o in out)
    # As accurate as autocast on the plain formulation (both ~1e-2 of the maps' range).
    assert _span_error(out, ref) <= max(2e-2, 1.5 * _span_error(ref_bf16, ref)), name
    if name in ('poolformer', 'poolformerv2', 'identityformer'):
        # The chunked loop ran (many chunks, no whole-tensor linear) and, for GELU, on
        # oneDNN's bf16 kernels where this CPU has them (oneDNN has no bf16 GEMM without
        # AVX-512: the loop then runs aten's bf16 GEMMs, and the same check holds).
        assert 'aten::linear' not in seen
        onednn = kernels == 'auto' and name == 'poolformer' and ops.available('onednn_linear_bf16')
        assert (ONEDNN_OP in seen) == onednn


def test_bf16_autocast_keeps_autocast_dtypes_and_the_fp32_path_exact():
    """The residual stream keeps autocast's dtype (fp32 after PoolFormer's fp32 layer scales)
    and leaving autocast restores the exact fp32 path (no state is left behind)."""
    model = build('poolformer', fork_feat=True, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with torch.autocast(**BF16):
            out = model(x)
            ref_bf16 = reference_forward(model, x)
        fp32 = model(x)
        ref = reference_forward(model, x)
    assert [o.dtype for o in out] == [r.dtype for r in ref_bf16]
    assert _span_error(fp32, ref) < 1e-5
    # The chunked MLP on its own returns what autocast gives the MLP's last 1x1 conv: bf16.
    mlp = model.stages[0].blocks[0].mlp
    z = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(**BF16):
        branch, plain = mlp_forward(mlp, z), mlp(z)
    assert branch.dtype == plain.dtype == torch.bfloat16
    assert _span_error(branch, plain) < 2e-2


def _mlp_operands(rows: int, c: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, c, generator=gen)
    w1, b1 = torch.randn(4 * c, c, generator=gen) / c ** 0.5, torch.randn(4 * c, generator=gen)
    w2, b2 = torch.randn(c, 4 * c, generator=gen) / (2 * c ** 0.5), torch.randn(c, generator=gen)
    return x, w1, b1, w2, b2


@pytest.mark.parametrize('onednn', [True, False])
@pytest.mark.parametrize('stream', [torch.float32, torch.bfloat16])
def test_chunked_mlp_on_bf16_weights_adds_into_the_residual_stream(onednn, stream):
    """fp32 (or bf16) rows and residual with bf16 weights: each chunk is cast, fc2's bf16
    output added to the residual in the stream's dtype, also when dst aliases the residual."""
    if onednn and not ops.available('onednn_linear_bf16'):
        pytest.skip("this torch build has no oneDNN bf16 linear")
    x, w1, b1, w2, b2 = _mlp_operands(300, 24)
    w1, b1, w2, b2 = (t.bfloat16() for t in (w1, b1, w2, b2))
    rows = x.to(stream)
    base = torch.randn(300, 24).to(stream)
    res_scale = torch.rand(24) + 0.5
    h = F.gelu(F.linear(rows.bfloat16().float(), w1.float(), b1.float())).bfloat16()
    expected = base.float() * res_scale + F.linear(h.float(), w2.float(), b2.float())
    dst = base.clone()  # dst aliases the residual, as in the blocks
    with chunk_sizes(onednn_mlp=96 * 7, aten_mlp=96 * 7):
        chunked_mlp(rows, w1, b1, w2, b2, dst, ACTS['gelu'],
                    ACTS['gelu'].onednn if onednn else None, base=dst, res_scale=res_scale)
    assert dst.dtype == stream
    tol = 2e-2 if stream == torch.bfloat16 else 1e-2  # bf16 roundings of h and fc2
    assert float((dst.float() - expected).abs().max()) <= tol * float(expected.abs().max())


def _script(repo_root, *args) -> str:
    """Runs tools/analysis/benchmark.py as a user would; returns its stdout."""
    proc = subprocess.run([sys.executable, osp.join('tools', 'analysis', 'benchmark.py'), *args],
                          cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _table(text: str, first_cell: str) -> List[List[str]]:
    """The cells of the markdown rows whose first cell starts with ``first_cell``."""
    return [[c.strip() for c in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('| ' + first_cell)]


def test_bf16_suite_prints_backbone_and_model_rows(repo_root, tmp_path):
    out = tmp_path / 'bf16.md'
    text = _script(repo_root, '--suite', 'bf16', '--models', 'poolformer_s12',
                   'fpn_poolformer_s12', '--shape', '64', '96', '--repeats', '1', '--no-onnx',
                   '--out', str(out))
    # stdout is the tables alone (log lines, such as the no-bf16-units warning, go to stderr).
    assert text.strip() == out.read_text().strip()
    assert 'bf16 units:' in text.splitlines()[0]  # the CPU line heads the output
    backbone = text[text.index('### poolformer_s12'):text.index('### fpn_poolformer_s12')]
    assert 'GEMM rate (2048^3, best round) fp32 ' in backbone and ', bf16 ' in backbone
    names = {'default', 'deploy', 'eager, channels-last bf16', 'default bf16'}
    cases = {r[0]: r for r in _table(backbone, '') if r[0] in names}
    assert set(cases) == names
    assert all(float(r[1]) > 0 and float(r[6]) > 0 for r in cases.values())  # ms, x limit
    assert 'bf16 max error / map range' in backbone and 'the original under autocast' in backbone
    model = text[text.index('### fpn_poolformer_s12, pipeline included'):]
    rows = {r[0]: r for r in _table(model, 'fp32') + _table(model, 'bf16')}
    assert float(rows['fp32'][1]) > 0
    # Without bf16 units the model runs fp32, and its row says so.
    assert ('bf16 (no bf16 units: ran fp32)' in rows) == (not cpu_bf16_flags())


def test_traffic_suite_prints_every_step_of_every_stage(repo_root):
    text = _script(repo_root, '--suite', 'traffic', '--models', 'poolformer_s12', '--shape',
                   '64', '96', '--repeats', '1', '--threads', '2')
    assert 'copy bandwidth' in text and 'bf16 units:' in text
    for precision in ('fp32', 'bf16'):
        head = text.index(f'{precision}, per block step')
        rows = _table(text[head:].split('\n\n')[2], '')[1:]
        steps = [r[0] for r in rows[:-2]]
        assert steps == [f'{s} {step}' for s in range(4) for step in
                         ('norm1', 'token mixer', 'residual 1', 'norm2', 'MLP + residual 2')]
        assert all(float(r[1]) > 0 and float(r[8]) > 0 for r in rows[:-2])  # ms, MB moved
        assert rows[-2][0] == 'blocks, all stages' and float(rows[-2][6]) > 0
    # bf16 moves fewer bytes in the MLPs (bf16 weights and activations).
    mb = {p: sum(float(r[8]) for r in _table(text[text.index(f'{p}, per block step'):].split(
        '\n\n')[2], '') if 'MLP' in r[0][:12]) for p in ('fp32', 'bf16')}
    assert mb['bf16'] < mb['fp32']
