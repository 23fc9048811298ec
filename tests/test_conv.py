"""conv2d / conv2d_backward: functional (Cython + BLAS) vs the NumPy reference, gradients, errors."""
import numpy as np
import pytest

import cybn
from cybn import functional as fn
from cybn import reference as ref
from cybn.functional import conv as fconv
from gradcheck import numerical_grad

_REAL_MIN_FLOPS = fconv._MIN_FLOPS_PER_THREAD


@pytest.fixture(autouse=True)
def _thread_every_call(monkeypatch):
    """The test shapes are small; without this, the small-work rule would run them all on one
    thread and the 2-thread runs would not test the threaded paths; likewise the Winograd
    paths are taken whatever the batch."""
    monkeypatch.setattr(fconv, "_MIN_FLOPS_PER_THREAD", 0)
    monkeypatch.setattr(fconv, "_WINO_MIN_PIXELS", 0)
    monkeypatch.setattr(fconv, "_WINO_DW_BLOCK_TILES", 1)  # Winograd dW: several image blocks


# (N, C, H, W, F, kh, kw, stride, padding, bias)
CASES = [
    (2, 3, 8, 8, 4, 3, 3, 1, 1, True),         # the common 3x3 'same' conv
    (3, 2, 7, 9, 4, 3, 2, (2, 1), (1, 2), True),  # non-square image/kernel/stride/padding
    (2, 3, 5, 5, 2, 1, 1, 1, 0, False),        # 1x1 kernel
    (1, 1, 4, 4, 1, 4, 4, 1, 0, True),         # batch 1, one channel, 1x1 output
    (4, 5, 8, 6, 3, 3, 3, 2, 2, False),        # stride 2, padding 2
    (3, 2, 10, 7, 5, 3, 3, 2, 0, True),        # output sizes that do not divide evenly
    (5, 1, 6, 11, 2, 2, 5, (3, 2), (0, 1), True),  # one input channel, odd everything
    (2, 4, 3, 3, 6, 5, 5, 1, 2, True),         # kernel larger than the image, fits with padding
    (1, 3, 1, 1, 2, 1, 1, 1, 0, True),         # 1x1 image
]
IDS = [f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_F{c[4]}k{c[5]}x{c[6]}_s{c[7]}p{c[8]}" for c in CASES]


def make(rng, case, dtype=np.float64):
    N, C, H, W, F, kh, kw, stride, padding, has_bias = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if has_bias else None
    return x, w, b, stride, padding


def output_shape(x, w, stride, padding):
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    return (x.shape[0], w.shape[0], (x.shape[2] + 2 * ph - w.shape[2]) // sh + 1,
            (x.shape[3] + 2 * pw - w.shape[3]) // sw + 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_matches_reference(rng, case, threads):
    x, w, b, s, p = make(rng, case)
    y_ref = ref.conv2d(x, w, b, s, p)
    y = fn.conv2d(x, w, b, s, p)
    assert y.shape == output_shape(x, w, s, p) and y.dtype == np.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(fn.conv2d_backward(dy, x, w, s, p), ref.conv2d_backward(dy, x, w, s, p)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)


WINO_CASES = [  # 3x3 stride 1: the Winograd paths (forward and dx)
    (3, 16, 8, 8, 16, 1),      # even output, padding 1
    (5, 16, 7, 9, 17, 1),      # odd output sizes: partial tiles at the borders
    (2, 17, 6, 5, 16, 0),      # padding 0 (dx uses padding 2)
    (3, 16, 5, 6, 16, 2),      # padding 2 (dx uses padding 0)
    (2, 16, 4, 4, 16, (3, 1)),  # padding 3 rows: dx falls back to col2im
    (4, 16, 3, 3, 18, 0),      # 1x1 output
    (2, 16, 11, 10, 16, 1),    # several tile rows/columns of F(4x4), partial last ones
    (2, 16, 13, 16, 16, 1),    # rows of whole F(4x4) tiles (the float32 vector cut), last row partial
    (1, 16, 9, 32, 16, 1),     # 8 tiles per row, 24 per image: 16 at a time, then row by row
]
# float32 tolerance per output tile size m (relative to the largest |value| of the result):
# the rounding of each transformed value is amplified by the transform coefficients. Measured
# on the cnn7 layers (32-128 channels, normal data, He-scaled weights; max |err| / max |y|):
# im2col 5e-7, F(2x2) 4e-7, F(4x4) 2.5e-6 - 9e-6 for y and dx, 2e-6 - 6e-6 for dW (batch 4-32;
# B^T, A^T entries up to 5 and 8). 1e-4 leaves >10x margin for F(4x4) while still catching any
# wrong transform entry (errors of O(1)).
WINO_F32_TOL = {2: 1e-4, 4: 1e-4}


@pytest.mark.parametrize("m", [2, 4], ids=["F2x2", "F4x4"])
@pytest.mark.parametrize("tiles", [1, 256], ids=["one-image-groups", "multi-image-groups"])
@pytest.mark.parametrize("case", WINO_CASES, ids=[str(c) for c in WINO_CASES])
def test_winograd_path(rng, monkeypatch, case, tiles, m, threads):
    monkeypatch.setattr(fconv, "_WINO_M", m)
    monkeypatch.setattr(fconv, "_WINO_TILES", {m: tiles})
    N, C, H, W, F, p = case
    assert fconv._use_winograd(3, 3, 1, 1, C, F, 1)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3))
    b = rng.standard_normal(F)
    y = fn.conv2d(x, w, b, 1, p)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, 1, p), rtol=1e-10, atol=1e-11)
    dy = rng.standard_normal(y.shape)
    for g, r in zip(fn.conv2d_backward(dy, x, w, 1, p), ref.conv2d_backward(dy, x, w, 1, p)):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-11)
    f32 = lambda a: a.astype(np.float32)
    tol = WINO_F32_TOL[m]
    y32 = fn.conv2d(f32(x), f32(w), f32(b), 1, p)
    np.testing.assert_allclose(y32, y, rtol=tol, atol=tol * np.abs(y).max())
    for g, r in zip(fn.conv2d_backward(f32(dy), f32(x), f32(w), 1, p),
                    ref.conv2d_backward(dy, x, w, 1, p)):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max())


@pytest.mark.parametrize("algo", ["im2col", "F2x2", "F4x4"])
def test_float32_error_of_each_algorithm(rng, monkeypatch, algo):
    """The float32 error of a deep layer (64 channels, 16x16) stays at the measured level (see
    WINO_F32_TOL), as a share of the largest |value| (4 seeds): y, dx, dW 2e-7 - 6e-7 (im2col
    and F(2x2)), y and dx 6e-6 - 9e-6, dW 5e-6 - 6e-6 (F(4x4)); the bounds leave >= 3x."""
    monkeypatch.setattr(fconv, "_WINOGRAD", algo != "im2col")
    monkeypatch.setattr(fconv, "_WINO_M", 2 if algo == "F2x2" else 4)
    monkeypatch.setattr(fconv, "_WINO_DW", algo == "F4x4")
    x = rng.standard_normal((4, 64, 16, 16))
    w = rng.standard_normal((64, 64, 3, 3)) / np.sqrt(9 * 64)
    dy = rng.standard_normal((4, 64, 16, 16))
    f32 = lambda a: a.astype(np.float32)
    want = (ref.conv2d(x, w, None, 1, 1),) + ref.conv2d_backward(dy, x, w, 1, 1)[:2]
    got = (fn.conv2d(f32(x), f32(w), None, 1, 1),) + fn.conv2d_backward(f32(dy), f32(x), f32(w),
                                                                       1, 1)[:2]
    bound = {"im2col": (2e-6, 2e-6, 2e-6), "F2x2": (2e-6, 2e-6, 2e-6),
             "F4x4": (3e-5, 3e-5, 2e-5)}[algo]
    for g, r, b in zip(got, want, bound):
        assert np.abs(g - r).max() / np.abs(r).max() < b


@pytest.mark.parametrize("m", [2, 4], ids=["F2x2", "F4x4"])
def test_winograd_matches_im2col(rng, monkeypatch, m):
    """Both algorithms of the same 3x3 layer agree (float32, batch > threads * group)."""
    x = rng.standard_normal((9, 32, 10, 10)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((9, 32, 10, 10)).astype(np.float32)
    monkeypatch.setattr(fconv, "_WINO_M", m)
    monkeypatch.setattr(fconv, "_WINO_TILES", {m: 50})
    out = {}
    for wino in (True, False):
        monkeypatch.setattr(fconv, "_WINOGRAD", wino)
        out[wino] = (fn.conv2d(x, w, None, 1, 1),) + fn.conv2d_backward(dy, x, w, 1, 1)
    for a, c in zip(out[True], out[False]):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4 * np.abs(c).max())


@pytest.mark.parametrize("chunk_bytes", [1, 700, 0])
def test_row_chunks(rng, monkeypatch, chunk_bytes, threads):
    """Images cut into blocks of 1 / a few / all output rows give the same result."""
    monkeypatch.setattr(fconv, "_CHUNK_BYTES", chunk_bytes)
    for case in (CASES[1], CASES[5]):
        x, w, b, s, p = make(rng, case)
        np.testing.assert_allclose(fn.conv2d(x, w, b, s, p), ref.conv2d(x, w, b, s, p),
                                   rtol=1e-10, atol=1e-12)
        dy = rng.standard_normal(output_shape(x, w, s, p))
        for g, r in zip(fn.conv2d_backward(dy, x, w, s, p), ref.conv2d_backward(dy, x, w, s, p)):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("case", CASES[:6], ids=IDS[:6])
def test_float32_matches_float64_reference(rng, case, threads):
    x, w, b, s, p = make(rng, case)
    f32 = lambda a: None if a is None else a.astype(np.float32)
    y_ref = ref.conv2d(x, w, b, s, p)
    y = fn.conv2d(f32(x), f32(w), f32(b), s, p)
    assert y.dtype == np.float32
    # float32 sums of K = C*kh*kw products: error ~ eps32 * sqrt(K) * |terms|
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())
    dy = rng.standard_normal(y.shape)
    got = fn.conv2d_backward(f32(dy), f32(x), f32(w), s, p)
    for g, want in zip(got, ref.conv2d_backward(dy, x, w, s, p)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())



@pytest.mark.parametrize("mod", [ref, fn], ids=["reference", "functional"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[3]], ids=[IDS[1], IDS[4], IDS[3]])
def test_gradients_finite_differences(rng, mod, case):
    x, w, b, s, p = make(rng, case)
    if b is None:
        b = rng.standard_normal(w.shape[0])
    g = rng.standard_normal(output_shape(x, w, s, p))  # loss = sum(g * y)
    loss = lambda: float(np.sum(g * mod.conv2d(x, w, b, s, p)))
    # one thread: hundreds of tiny calls, and the point here is the maths, not the threading
    with cybn.num_threads(1):
        dx, dw, db = mod.conv2d_backward(g, x, w, s, p)
        np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_compute_dx_false(rng, threads):
    x, w, _, s, p = make(rng, CASES[1])
    dy = rng.standard_normal(output_shape(x, w, s, p))
    dx, dw, db = fn.conv2d_backward(dy, x, w, s, p, compute_dx=False)
    _, dw_ref, db_ref = ref.conv2d_backward(dy, x, w, s, p)
    assert dx is None
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-11)
    assert ref.conv2d_backward(dy, x, w, s, p, compute_dx=False)[0] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C, m", [(5, 4), (32, 2), (32, 4)], ids=["im2col", "F2x2", "F4x4"])
def test_one_vs_two_threads_and_deterministic(rng, monkeypatch, dtype, C, m):
    """Work is split in fixed blocks (dW/db summed per block, blocks in order), so results are
    bitwise identical run to run AND for 1 vs 2 threads."""
    monkeypatch.setattr(fconv, "_WINO_M", m)
    x = rng.standard_normal((37, C, 9, 8)).astype(dtype)
    w = rng.standard_normal((C + 1, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(C + 1).astype(dtype)
    dy = rng.standard_normal((37, C + 1, 9, 8)).astype(dtype)
    res = {}
    for n in (1, 2):
        with cybn.num_threads(n):
            first = (fn.conv2d(x, w, b, 1, 1),) + fn.conv2d_backward(dy, x, w, 1, 1)
            again = (fn.conv2d(x, w, b, 1, 1),) + fn.conv2d_backward(dy, x, w, 1, 1)
        for a, c in zip(first, again):
            np.testing.assert_array_equal(a, c)
        res[n] = first
    for a, c in zip(res[1], res[2]):
        np.testing.assert_array_equal(a, c)


_G = {4: np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
      6: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [4, 6], ids=["F2x2", "F4x4"])
@pytest.mark.parametrize("flipped", [False, True], ids=["forward", "dx"])
@pytest.mark.parametrize("F, C", [(3, 1), (70, 5), (5, 131)])  # blocks of 64 kernels + a tail
def test_winograd_weight_transform(rng, dtype, alpha, flipped, F, C):
    """V[xi] = G g G^T of every kernel (flipped: of w[f, c, ::-1, ::-1], stored (xi, c, f)),
    computed in double and rounded once: within one rounding of the float64 product, and
    bitwise the same for 1, 2 and 3 threads."""
    from cybn._kernels import conv as kconv
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    g = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) if flipped else w
    G = _G[alpha]
    expect = np.einsum("ai,rsij,bj->abrs", G, g.astype(np.float64), G).reshape(alpha * alpha,
                                                                             *g.shape[:2])
    out = {}
    for n in (1, 2, 3):
        V = np.full(expect.shape, np.nan, dtype)
        kconv.winograd_weights(w, V, flipped, n)
        out[n] = V
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(out[1], expect, rtol=eps, atol=8 * np.finfo(np.float64).eps)
    np.testing.assert_array_equal(out[1], out[2])
    np.testing.assert_array_equal(out[1], out[3])


def test_small_work_runs_on_fewer_threads(monkeypatch):
    """Calls with little work use fewer kernel threads than the setting (never 0, never more
    than the images); as the splits are fixed, the results stay the same bits (tested above)."""
    monkeypatch.setattr(fconv, "_MIN_FLOPS_PER_THREAD", _REAL_MIN_FLOPS)
    with cybn.num_threads(2):
        assert fconv._threads_for(1, 32, 32, 3, 3, 32, 32) == 1  # batch 1
        assert fconv._threads_for(2, 64, 128, 3, 3, 8, 8) == 1    # 19 MFLOP
        assert fconv._threads_for(128, 32, 32, 3, 3, 32, 32) == 2
        assert fconv._threads_for(8, 64, 128, 3, 3, 8, 8, products=2) == 2
        monkeypatch.setattr(fconv, "_MIN_FLOPS_PER_THREAD", 0)
        assert fconv._threads_for(1, 1, 1, 1, 1, 1, 1) == 1
        assert fconv._threads_for(5, 1, 1, 1, 1, 1, 1) == 2
    with cybn.num_threads(1):
        assert fconv._threads_for(128, 32, 32, 3, 3, 32, 32) == 1


def test_small_batches_use_im2col(rng, monkeypatch):
    """Below _WINO_MIN_PIXELS output pixels the weight transform does not pay: im2col, with the
    same results as Winograd up to float rounding."""
    monkeypatch.setattr(fconv, "_WINO_MIN_PIXELS", 512)
    assert not fconv._use_winograd(3, 3, 1, 1, 64, 128, 1 * 8 * 8)
    assert fconv._use_winograd(3, 3, 1, 1, 64, 128, 8 * 8 * 8)
    x = rng.standard_normal((1, 16, 8, 8))
    w = rng.standard_normal((16, 16, 3, 3))
    small = fn.conv2d(x, w, None, 1, 1)
    monkeypatch.setattr(fconv, "_WINO_MIN_PIXELS", 0)
    np.testing.assert_allclose(small, fn.conv2d(x, w, None, 1, 1), rtol=1e-10, atol=1e-11)


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for case in CASES:
        x, w, b, s, p = make(rng, case)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True) if b is not None else None
        yt = torch.nn.functional.conv2d(xt, wt, bt, s, p)
        dy = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(dy))
        y = fn.conv2d(x, w, b, s, p)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-11)
        dx, dw, db = fn.conv2d_backward(dy, x, w, s, p)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-11)
        if b is not None:
            np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-10, atol=1e-11)


def test_non_contiguous_input(rng, threads):
    x = rng.standard_normal((3, 8, 12, 5)).transpose(0, 3, 1, 2)[:, :, :, ::2]  # (3, 5, 8, 6) view
    w = np.asfortranarray(rng.standard_normal((4, 5, 3, 3)))
    dy = rng.standard_normal((3, 4, 8, 6))[:, :, ::-1]
    y = fn.conv2d(x, w, None, 1, 1)
    np.testing.assert_allclose(y, ref.conv2d(np.ascontiguousarray(x), w, None, 1, 1), rtol=1e-10)
    got = fn.conv2d_backward(dy, x, w, 1, 1)
    want = ref.conv2d_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), w, 1, 1)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-11)


def test_empty_batch():
    x = np.zeros((0, 2, 5, 5))
    w = np.ones((3, 2, 3, 3))
    y = fn.conv2d(x, w, np.zeros(3), 1, 1)
    assert y.shape == (0, 3, 5, 5)
    dx, dw, db = fn.conv2d_backward(y, x, w, 1, 1)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_bad_shapes_raise_value_error():
    x, w = np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(3, 8, 8\)"):
        fn.conv2d(x[0], w)
    with pytest.raises(ValueError, match=r"weight must have 4 dimensions"):
        fn.conv2d(x, w[0])
    with pytest.raises(ValueError, match=r"weight \(4, 2, 3, 3\) expects 2 input channels but x "
                                         r"\(2, 3, 8, 8\) has 3"):
        fn.conv2d(x, w[:, :2])
    with pytest.raises(ValueError, match=r"kernel \(11, 3\).*larger than the padded input \(10, 10\)"):
        fn.conv2d(x, np.zeros((4, 3, 11, 3)), padding=1)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\).*got \(3,\)"):
        fn.conv2d(x, w, np.zeros(3))
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        fn.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match=r"padding must be >= 0"):
        fn.conv2d(x, w, padding=(1, -1))
    with pytest.raises(ValueError, match=r"dy must have the forward output shape \(2, 4, 8, 8\).*"
                                         r"got \(2, 4, 6, 6\)"):
        fn.conv2d_backward(np.zeros((2, 4, 6, 6)), x, w, 1, 1)
    with pytest.raises(ValueError, match=r"dy must have 4 dimensions"):
        fn.conv2d_backward(np.zeros((2, 4, 36)), x, w)


def test_bad_types_raise_type_error():
    x, w = np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 3, 3))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        fn.conv2d(x.astype(np.int64), w)
    with pytest.raises(TypeError, match="weight has dtype float32 but the other operands are float64"):
        fn.conv2d(x, w.astype(np.float32))
    with pytest.raises(TypeError, match="bias has dtype float32"):
        fn.conv2d(x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="dy has dtype float32"):
        fn.conv2d_backward(np.zeros((2, 4, 6, 6), np.float32), x, w)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        fn.conv2d(x.tolist(), w)
    with pytest.raises(TypeError, match="stride must be an integer"):
        fn.conv2d(x, w, stride=1.5)
