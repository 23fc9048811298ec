"""Shared timing harness for the cybn benchmark scripts (``benchmarks/bench_*.py``).

The machine is small and shared, so every number here is taken *side by side*: the cases of
one comparison run interleaved (round-robin, order rotated each round) and we report the
median (plus the inter-quartile range as the spread). Absolute figures from different runs
are not comparable; ratios within one ``measure`` call are.

API (see benchmarks/README.md):
    machine_info() -> dict            cpu, cores, cybn config (OpenMP, threads, BLAS lib + kernel)
    header(torch='auto') -> str       the same as Markdown lines, for the top of a report
    torch_or_none() -> module | None  optional PyTorch baseline (never a cybn dependency)
    threads(n)                        context manager: cybn.num_threads(n) + torch.set_num_threads(n)
    measure(cases, repeats, warmup) -> {name: median seconds per call}
    measure_stats(cases, ...) -> {name: Stats(median, q1, q3, iqr, min, n)}
    memory_bandwidth_gbs(nbytes, repeats, nthreads) -> GB/s of a large copy (read + write)
    gemm_gflops(dtype, n) -> GFLOP/s of numpy matmul at the current BLAS thread setting
    markdown_table(headers, rows) -> str
    fmt_time(seconds) -> str
"""
import contextlib
import glob
import importlib.machinery
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np



def _has_inplace_build(repo):
    """Whether ``repo`` holds a cybn whose kernels were built in place (``build_ext --inplace``)."""
    kernels = os.path.join(glob.escape(repo), "cybn", "_kernels")
    return any(glob.glob(os.path.join(kernels, "_openmp*" + ext)) for ext in importlib.machinery.EXTENSION_SUFFIXES)


# The benchmarks measure the checkout's in-place build when there is one, else the installed cybn:
# an unbuilt checkout on sys.path (the current folder, `python -m`) would shadow it and fail.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _has_inplace_build(_REPO):
    if _REPO not in sys.path:
        sys.path.insert(0, _REPO)
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _REPO]

import cybn  # noqa: E402
from cybn._config import config as _cybn_config  # noqa: E402

__all__ = ["machine_info", "header", "torch_or_none", "threads", "measure", "measure_stats", "Stats",
           "memory_bandwidth_gbs", "gemm_gflops", "markdown_table", "fmt_time", "all_threads"]


# ----------------------------------------------------------------------------- machine
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx512f", "avx2", "fma") if x in flags]
    except OSError:
        pass
    return []


def all_threads():
    """The cores this process may use (the 'all threads' setting of the benches)."""
    from cybn._threads import available_cores
    return available_cores()


def machine_info():
    """CPU model, core counts, SIMD flags and cybn's config (OpenMP, threads, BLAS lib + kernel)."""
    return {
        "cpu": _cpu_model(),
        "simd": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cores_available": all_threads(),
        "cybn": _cybn_config(),
    }


def header(torch="auto"):
    """Markdown lines describing the machine, OpenMP, threads and the BLAS kernel (and torch).

    ``torch``: the module (or None when absent); by default ``torch_or_none()``; False for a
    benchmark without a torch baseline."""
    if isinstance(torch, str):
        torch = torch_or_none()
    info = machine_info()
    c = info["cybn"]
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU: {info['cpu']} ({info['cores_available']} cores available, "
        f"{info['logical_cpus']} logical; SIMD: {', '.join(info['simd']) or 'n/a'})",
        f"- cybn {c['cybn']}, python {c['python']}, numpy {c['numpy']}, {c['platform']}",
        f"- OpenMP: {'enabled' if c['openmp'] else 'DISABLED (kernels serial)'}; "
        f"cybn threads now {c['num_threads']} (kernels {c['kernel_threads']})",
    ]
    if not c["blas"]:
        lines.append("- BLAS: none reported by threadpoolctl")
    for b in c["blas"]:
        where = os.path.join(*os.path.normpath(b["filepath"] or "?").split(os.sep)[-2:])
        lines.append(f"- BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
                     f"{b['num_threads']} threads ({where})")
    if c["blas_environment"]:
        lines.append("- BLAS settings from the environment: "
                     + ", ".join(f"{k}={v}" for k, v in c["blas_environment"].items()))
    try:
        loads = os.getloadavg()
        busy = (f" (above the {info['cores_available']} cores: other processes compete for the CPU)"
                if loads[0] > info["cores_available"] else "")
        lines.append(f"- load average (1/5/15 min) at start: {', '.join(f'{v:.2f}' for v in loads)}{busy}")
    except OSError:
        pass
    if torch is False:
        pass
    elif torch is not None:
        lines.append(f"- PyTorch {torch.__version__} (baseline only; "
                     f"{'MKL-DNN' if torch.backends.mkldnn.is_available() else 'no MKL-DNN'})")
    else:
        lines.append("- PyTorch: not installed (torch columns omitted)")
    return "\n".join(lines)


_TORCH_CHECKED = False
_TORCH = None


def torch_or_none():
    """The ``torch`` module if importable, else None (and say so once). Never a cybn dependency."""
    global _TORCH_CHECKED, _TORCH
    if not _TORCH_CHECKED:
        _TORCH_CHECKED = True
        try:
            import torch
            _TORCH = torch
        except ImportError:
            print("note: PyTorch is not installed; torch baselines are skipped "
                  "(optional: pip install torch==2.13.0)",
                  file=sys.stderr)
    return _TORCH


@contextlib.contextmanager
def threads(n):
    """Run a block with ``n`` threads in cybn (kernels + BLAS cap) and in torch if present."""
    torch = torch_or_none()
    prev_torch = torch.get_num_threads() if torch is not None else None
    with cybn.num_threads(n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch is not None:
                torch.set_num_threads(prev_torch)


# ----------------------------------------------------------------------------- timing
@dataclass
class Stats:
    """Per-call seconds of one case: median and spread over the samples."""
    median: float
    q1: float
    q3: float
    min: float
    n: int
    number: int  # calls per sample (auto-calibrated for very short ops)

    @property
    def iqr(self):
        return self.q3 - self.q1

    @property
    def rel_iqr(self):
        return self.iqr / self.median if self.median > 0 else float("nan")


def _calibrate(fn, min_sample):
    """Calls per sample so that one sample lasts at least ``min_sample`` seconds (timer noise)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    if dt >= min_sample:
        return 1
    number = 1
    while dt < min_sample and number < 1 << 20:
        number *= 2
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
    return number


def _warmed_up(cases, warmup, settings=None):
    """The case names, after ``warmup`` untimed rounds of every case (each in its setting)."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            with _setting(settings, name):
                cases[name]()
    return names


def _setting(settings, name):
    """The context a case runs in: ``settings[name]()`` if given (e.g. its thread count)."""
    make = (settings or {}).get(name)
    return make() if make is not None else contextlib.nullcontext()


def rotated(names, r):
    """Round ``r``'s order: starting at a different case each round, so none always runs first."""
    k = r % len(names)
    return names[k:] + names[:k]


def measure_stats(cases, repeats=30, warmup=3, min_sample=2e-4):
    """Time each callable in ``cases`` (dict name -> zero-arg callable), interleaved.

    Every round runs each case once (one sample = ``number`` back-to-back calls, calibrated so
    a sample lasts >= ``min_sample`` s), rotating the start so no case always runs first.
    Returns {name: Stats} in seconds per call.
    """
    names = _warmed_up(cases, warmup)
    numbers = {name: _calibrate(cases[name], min_sample) for name in names}
    samples = {name: [] for name in names}
    perf = time.perf_counter
    for r in range(repeats):
        for name in rotated(names, r):
            fn, number = cases[name], numbers[name]
            t0 = perf()
            for _ in range(number):
                fn()
            samples[name].append((perf() - t0) / number)
    out = {}
    for name in names:
        s = sorted(samples[name])
        if len(s) >= 2:
            q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        else:
            q1 = q3 = s[0]
        out[name] = Stats(statistics.median(s), q1, q3, s[0], len(s), numbers[name])
    return out


def measure_back_to_back(cases, repeats=15, warmup=2, settings=None):
    """Medians of each case's second of two back-to-back calls, and of its first, interleaved.

    Every round (rotated start, as in ``measure_stats``) runs each case twice in a row and times
    both calls. The second call is the steady state of a loop of that case (a training loop's
    step); the first follows the other cases' calls, so it also pays for whatever they left
    behind (on a VM, idle cores that are slow to come back). ``settings`` (name -> context
    manager factory) puts a case's pairs in their own setting, e.g. a thread count: cases at
    different thread counts then interleave too, so a drift of the machine's speed during the
    run cannot bias their ratio. Returns ({name: second}, {name: first}) in seconds."""
    names = _warmed_up(cases, warmup, settings)
    firsts = {name: [] for name in names}
    seconds = {name: [] for name in names}
    perf = time.perf_counter
    for r in range(repeats):
        for name in rotated(names, r):
            fn = cases[name]
            with _setting(settings, name):
                t0 = perf()
                fn()
                t1 = perf()
                fn()
                t2 = perf()
            firsts[name].append(t1 - t0)
            seconds[name].append(t2 - t1)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    return med, {name: statistics.median(v) for name, v in firsts.items()}


def measure(cases, repeats=30, warmup=3, min_sample=2e-4):
    """Median seconds per call of each case, run interleaved (see ``measure_stats``)."""
    return {k: v.median for k, v in measure_stats(cases, repeats, warmup, min_sample).items()}


# ----------------------------------------------------------------------------- machine rates
def cpu_ticks():
    """(steal, total) clock ticks of all CPUs so far, from Linux's /proc/stat, or None elsewhere.
    Steal is time the hypervisor gave this VM's vCPUs to something else while they had work."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user .. steal; guest time is inside user
    return ticks[7], sum(ticks)


def steal_share(before, after):
    """The share of CPU time stolen between two ``cpu_ticks()`` readings, or None."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def memory_bandwidth_gbs(nbytes=256 * 2**20, repeats=7, nthreads=1):
    """Measured copy bandwidth in GB/s (1e9 B/s), counting read + write (2 * nbytes per copy).

    ``np.copyto`` of a ``nbytes`` float64 array into another (both pre-faulted), median of
    ``repeats``. ``nthreads`` > 1 splits the copy in contiguous chunks over a thread pool
    (numpy releases the GIL while copying) to show what several cores can pull. Write-allocate
    traffic is not counted, the usual STREAM convention.
    """
    n = nbytes // 8
    src = np.ones(n)
    dst = np.zeros(n)
    if nthreads <= 1:
        def copy():
            np.copyto(dst, src)
    else:
        bounds = np.linspace(0, n, nthreads + 1).astype(int)
        chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        pool = ThreadPoolExecutor(nthreads)

        def copy():
            list(pool.map(lambda c: np.copyto(c[0], c[1]), chunks))
    try:
        copy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            copy()
            times.append(time.perf_counter() - t0)
    finally:
        if nthreads > 1:
            pool.shutdown()
    return 2 * n * 8 / statistics.median(times) / 1e9


def gemm_gflops(dtype=np.float32, n=1024, repeats=5):
    """Measured numpy matmul rate (GFLOP/s, 2n^3 per product) at the current BLAS thread cap."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- output
def fmt_time(seconds):
    """Seconds in a readable unit (µs below 1 ms, ms below 1 s)."""
    if seconds != seconds:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def markdown_table(headers, rows):
    """A GitHub Markdown table; cells are str()-ed, floats given 3 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.3g}"
        return str(v)
    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line([str(h) for h in headers]), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in body]
    return "\n".join(out)


if __name__ == "__main__":  # quick self-check: python benchmarks/harness.py
    torch = torch_or_none()
    print(header(torch))
    print(f"- copy bandwidth: {memory_bandwidth_gbs():.1f} GB/s (1 thread), "
          f"{memory_bandwidth_gbs(nthreads=all_threads()):.1f} GB/s ({all_threads()} threads)")
    with threads(1):
        g1 = gemm_gflops()
    with threads(all_threads()):
        gn = gemm_gflops()
    print(f"- sgemm n=1024: {g1:.0f} GFLOP/s (1 thread), {gn:.0f} GFLOP/s ({all_threads()} threads)")
    a = np.ones(1000)
    st = measure_stats({"sum": a.sum, "copy": a.copy}, repeats=20)
    print(markdown_table(["case", "median", "IQR", "calls/sample"],
                         [[k, fmt_time(v.median), fmt_time(v.iqr), v.number] for k, v in st.items()]))
