"""Distributed runs on CPU: tools/dist_train.sh (torchrun, two one-process nodes) and
tools/slurm_train.sh, two processes each with the gloo backend, and the scripts' usage
messages. Evaluation in two processes through tools/dist_test.sh is tested in
test_dist_runs.py."""
import glob
import os
import os.path as osp
import socket
import stat
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_script(repo_root, script, *args, env=None, timeout=900):
    full_env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), **(env or {}))
    return subprocess.run(['bash', osp.join(repo_root, 'tools', script), *map(str, args)],
                          cwd=repo_root, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(proc):
    assert proc.returncode == 0, \
        f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}'


def train_log(work_dir):
    logs = glob.glob(osp.join(work_dir, '*', '*.log'))
    assert len(logs) == 1, logs
    with open(logs[0]) as f:
        return f.read()


DIST_OPTIONS = ['env_cfg.dist_cfg.backend=gloo', 'find_unused_parameters=False']


@pytest.mark.slow
def test_dist_train_sh_on_two_nodes_trains_retinanet_with_every_parameter_used(
        repo_root, coco_mini_run, tmp_path):
    """The README's multi-node recipe: dist_train.sh once per node with NNODES, NODE_RANK,
    MASTER_ADDR and PORT; here two one-process "nodes" on this machine meet at node 0.
    torchrun's launcher, a world size of 2, both iterations of the epoch, no DDP complaint
    of an unused parameter (``find_unused_parameters=False``), and the epoch's checkpoint.

    (``dist_train.sh CONFIG 2``, two processes on one node, is the launcher of the
    Mask R-CNN run in test_dist_runs.py and the Semantic FPN one in
    test_train_test_segmentation.py.)"""
    # coco_mini's 3 training images, padded to 4 by the sampler: 2 iterations of 1 image per
    # rank. DDP reports parameters without a gradient when the next iteration starts, so one
    # iteration would not do.
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12', batch_size=1)
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), NNODES='2',
               MASTER_ADDR='127.0.0.1')
    cmd = ['bash', osp.join(repo_root, 'tools', 'dist_train.sh'), str(config), '1',
           '--work-dir', str(work), '--cfg-options', *options, *DIST_OPTIONS]
    nodes = [subprocess.Popen(cmd, cwd=repo_root, env=dict(env, NODE_RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=900) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, f'exit {node.returncode}\n{out[-3000:]}\n{err[-8000:]}'
        assert 'Expected to have finished reduction' not in err
        assert 'did not receive grad' not in err
    log = train_log(work)
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size: one process per node
    assert 'Epoch(train) [1][2/2]' in log
    assert (work / 'epoch_1.pth').is_file()


FAKE_SRUN = r'''#!/usr/bin/env bash
# Stand-in for Slurm's srun on one machine: records its arguments, then starts --ntasks
# copies of the command with the variables srun gives each task.
echo "$@" > "$SRUN_RECORD"
ntasks=1
while [ $# -gt 0 ]; do
    case "$1" in
        --ntasks=*) ntasks=${1#*=}; shift ;;
        -p) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
pids=()
for ((i = 0; i < ntasks; i++)); do
    SLURM_PROCID=$i SLURM_NTASKS=$ntasks SLURM_LOCALID=$i SLURM_NODELIST=localhost "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
'''


@pytest.mark.slow
def test_slurm_train_two_tasks(repo_root, coco_mini_run, tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / 'srun_args.txt'

    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12', batch_size=2)
    work = tmp_path / 'work'
    proc = run_script(repo_root, 'slurm_train.sh', 'cpu_partition', 'poolformer_job', config,
                      work, '--cfg-options', *options, *DIST_OPTIONS,
                      env=dict(PATH=f'{bin_dir}:{os.environ["PATH"]}', SRUN_RECORD=str(record),
                               GPUS='2', GPUS_PER_NODE='8', CPUS_PER_TASK='1',
                               SRUN_ARGS='--quotatype=auto', MASTER_PORT=str(free_port())))
    check_ok(proc)
    args = record.read_text().split()
    for expected in ('-p', 'cpu_partition', '--job-name=poolformer_job', '--ntasks=2',
                     '--ntasks-per-node=2', '--gres=gpu:2', '--cpus-per-task=1',
                     '--quotatype=auto', '--launcher', 'slurm', f'--work-dir={work}'):
        assert expected in args, (expected, args)
    log = train_log(work)
    assert 'Distributed launcher: slurm' in log and 'GPU number: 2' in log
    assert (work / 'epoch_1.pth').is_file()


def test_scripts_print_usage(repo_root):
    for script, needs in (('dist_train.sh', 'CONFIG GPUS'),
                          ('dist_test.sh', 'CONFIG CHECKPOINT GPUS'),
                          ('slurm_train.sh', 'PARTITION JOB_NAME CONFIG WORK_DIR'),
                          ('slurm_test.sh', 'PARTITION JOB_NAME CONFIG CHECKPOINT')):
        proc = run_script(repo_root, script)
        assert proc.returncode == 2 and 'usage: ' in proc.stderr and needs in proc.stderr
