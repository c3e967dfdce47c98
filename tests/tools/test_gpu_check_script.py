"""``tools/ci/gpu_check.sh`` on a machine without a GPU: the flow runs end to end (no
install needed here), reports the environment, runs the CUDA tests (all skipped) and ends
with the benchmark's plain refusal; the exit status says the benchmark could not run."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only behaviour of the script')
def test_gpu_check_without_a_gpu_reports_and_skips(repo_root, tmp_path):
    out = tmp_path / 'gpu_check'
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(tmp_path / 'no_wheels'))
    proc = subprocess.run(['bash', osp.join('tools', 'ci', 'gpu_check.sh'), str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    env_txt = (out / 'env.txt').read_text()
    assert 'available False' in env_txt and 'mmcv CUDA ops: no' in env_txt
    assert 'threads' in env_txt  # the CPU line
    tests = (out / 'cuda_tests.txt').read_text()
    assert 'skipped' in tests and 'failed' not in tests and (out / 'cuda_tests.xml').is_file()
    assert 'no CUDA device' in (out / 'cuda_bench.log').read_text()
    assert '[gpu_check] tests exit 0, benchmark exit 1' in proc.stdout
    assert proc.returncode == 1
