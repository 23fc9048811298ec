import io
import subprocess
import sys

import pytest
from conftest import TESTS_DIR
from threadpoolctl import threadpool_info

import cybn
from cybn._kernels._openmp import openmp_enabled


def blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_set_get_and_blas_follows():
    before = cybn.get_num_threads()
    try:
        cybn.set_num_threads(1)
        assert cybn.get_num_threads() == 1
        assert blas_threads() <= {1}
    finally:
        cybn.set_num_threads(before)


def test_context_manager_restores():
    before = cybn.get_num_threads()
    with cybn.num_threads(1) as n:
        assert n == 1 and cybn.get_num_threads() == 1
    assert cybn.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with cybn.num_threads(1):
            raise RuntimeError("boom")
    assert cybn.get_num_threads() == before


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_thread_counts(bad, exc):
    with pytest.raises(exc, match="threads"):
        cybn.set_num_threads(bad)


def run_python(code, *args, **env):
    import os
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=full_env, cwd=TESTS_DIR)


def test_environment_variable():
    r = run_python("import cybn; print(cybn.get_num_threads())", CYBN_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    r = run_python("import cybn; cybn.get_num_threads()", CYBN_NUM_THREADS="zero")
    assert r.returncode != 0 and "CYBN_NUM_THREADS (number of threads) must be an integer, got 'zero'" in r.stderr
    r = run_python("import cybn; cybn.get_num_threads()", CYBN_NUM_THREADS="0")
    assert r.returncode != 0 and "CYBN_NUM_THREADS (number of threads) must be >= 1, got 0" in r.stderr


def test_show_config_reports_everything():
    buf = io.StringIO()
    cybn.show_config(file=buf)
    text = buf.getvalue()
    assert cybn.__version__ in text
    assert "OpenMP: " + ("enabled" if openmp_enabled() else "DISABLED") in text
    assert "threads:" in text and "BLAS:" in text
    if openmp_enabled():  # the runtime the kernels run on (torch's libgomp when torch came first)
        assert "OpenMP runtime: " in text


def test_show_config_names_the_blas_settings_of_the_environment():
    """OPENBLAS_* variables can choose OpenBLAS's kernel (OPENBLAS_CORETYPE): a report says so.
    OPENBLAS_VERBOSE=0 is OpenBLAS's default, so this subprocess runs as every other."""
    r = run_python("import cybn; cybn.show_config()", OPENBLAS_VERBOSE="0")
    assert r.returncode == 0, r.stderr
    line = next(s for s in r.stdout.splitlines() if s.startswith("BLAS settings from the environment: "))
    assert "OPENBLAS_VERBOSE=0" in line


def test_cli_version_and_config():
    r = subprocess.run([sys.executable, "-m", "cybn", "config"], capture_output=True, text=True,
                       cwd=TESTS_DIR)
    assert r.returncode == 0 and "OpenMP" in r.stdout


def test_idle_openmp_threads_sleep_by_default_but_user_choice_wins():
    code = "import os, cybn; print(os.environ['OMP_WAIT_POLICY'])"
    import os
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=TESTS_DIR)
    assert r.stdout.strip() == "PASSIVE"
    r = run_python(code, OMP_WAIT_POLICY="ACTIVE")
    assert r.stdout.strip() == "ACTIVE"


def test_single_threaded_blas_holds_and_restores():
    from cybn._threads import single_threaded_blas
    before = cybn.get_num_threads()
    try:
        cybn.set_num_threads(2)
        with single_threaded_blas:
            assert blas_threads() == {1}
            with single_threaded_blas:  # nested (or another Python thread's call) keeps the hold
                assert blas_threads() == {1}
            assert blas_threads() == {1}
        assert blas_threads() == {2}
    finally:
        cybn.set_num_threads(before)


def test_blas_hold_and_setting_work_from_any_python_thread():
    """threadpoolctl >= 3.8 ignores OpenBLAS limits set from a Python thread other than the
    first one that set any; cybn's hold and setting must still apply there (an ``infer`` in a
    server thread would otherwise run OpenBLAS's own pool beside the OpenMP team)."""
    import threading
    from cybn._threads import single_threaded_blas
    before = cybn.get_num_threads()
    seen = []

    def work():
        with single_threaded_blas:
            seen.append(blas_threads())
        seen.append(blas_threads())
        cybn.set_num_threads(1)
        seen.append(blas_threads())
    try:
        cybn.set_num_threads(2)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert seen == [{1}, {2}, {1}]
    finally:
        cybn.set_num_threads(before)


def test_set_num_threads_during_a_blas_hold_is_not_undone():
    """A set_num_threads from another Python thread while a kernel holds BLAS at 1 is applied
    when the hold ends (the old conv code restored the limits it found on entry)."""
    import threading
    from cybn._threads import single_threaded_blas
    before = cybn.get_num_threads()
    try:
        cybn.set_num_threads(2)
        with single_threaded_blas:
            t = threading.Thread(target=cybn.set_num_threads, args=(1,))
            t.start()
            t.join()
            assert blas_threads() == {1} and cybn.get_num_threads() == 1
        assert blas_threads() == {1}
        with single_threaded_blas:
            cybn.set_num_threads(2)
            assert blas_threads() == {1}
        assert blas_threads() == {2}
    finally:
        cybn.set_num_threads(before)


def test_concurrent_kernel_calls_restore_the_setting():
    import threading
    import numpy as np
    from cybn import functional as F
    before = cybn.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    w = rng.standard_normal((200, 300)).astype(np.float32)
    xc = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    wc = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    want = F.linear(x, w), F.conv2d(xc, wc, padding=1)
    errors = []

    def work():
        for _ in range(30):
            if not (np.array_equal(F.linear(x, w), want[0])
                    and np.array_equal(F.conv2d(xc, wc, padding=1), want[1])):
                errors.append("result changed")
    try:
        cybn.set_num_threads(2)
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert blas_threads() == {2}
    finally:
        cybn.set_num_threads(before)


IDLE_SPIN_CHECK = """
import os, sys, time
import cybn
from cybn._kernels._openmp import idle_spin_active
from cybn._threads import kernel_threads

def cold_within(seconds):
    end = time.monotonic() + seconds
    while idle_spin_active() and time.monotonic() < end:
        time.sleep(0.005)
    return idle_spin_active() == 0

cybn.set_num_threads(int(sys.argv[1]))
kernel_threads()  # what every multi-threaded kernel call does first
print(idle_spin_active(), cold_within(5.0))
if sys.argv[2] == "fork":  # a forked child has no spinner threads: the first kernel starts one
    pid = os.fork()
    if pid == 0:
        kernel_threads()
        os._exit(0 if idle_spin_active() == 2 and cold_within(5.0) else 3)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not cybn._threads.idle_spin_available(), reason="no idle spinners here")
@pytest.mark.parametrize("threads,env,expected", [
    (2, {}, "2 True"),                       # one spinner per team thread, asleep soon after
    (1, {}, "0 True"),                       # one thread: no spinner
    (2, {"CYBN_IDLE_SPIN": "0"}, "0 True"),  # turned off
    (2, {"CYBN_IDLE_SPIN": "1"}, "2 True"),
])
def test_idle_spinners_follow_the_thread_count_and_the_switch(threads, env, expected):
    if threads > cybn._threads.available_cores():
        pytest.skip("needs 2 cores")
    r = run_python(IDLE_SPIN_CHECK, str(threads), "-", **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == expected.split()


@pytest.mark.skipif(not cybn._threads.idle_spin_available() or cybn._threads.available_cores() < 2,
                    reason="needs idle spinners and 2 cores")
def test_idle_spinners_restart_in_a_forked_child():
    r = run_python(IDLE_SPIN_CHECK, "2", "fork")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "True", "0"]


def test_bad_idle_spin_switch_is_a_clear_error():
    r = run_python("import cybn; cybn.get_num_threads()", CYBN_IDLE_SPIN="yes")
    assert r.returncode != 0 and "CYBN_IDLE_SPIN must be one of ('0', '1'), got 'yes'" in r.stderr


@pytest.mark.parametrize("var,value,message", [
    ("CYBN_IDLE_SPIN", "yes", "CYBN_IDLE_SPIN must be one of ('0', '1'), got 'yes'"),
    ("CYBN_NUM_THREADS", "zero", "CYBN_NUM_THREADS (number of threads) must be an integer, got 'zero'"),
])
def test_bad_setting_is_a_one_line_cli_error(var, value, message):
    import os
    r = subprocess.run([sys.executable, "-m", "cybn", "config"], capture_output=True, text=True,
                       cwd=TESTS_DIR, env=dict(os.environ, **{var: value}))
    assert r.returncode == 2 and r.stderr.strip() == f"cybn: error: {message}"


@pytest.mark.parametrize("cgroup,files,limited", [
    ("0::/job\n", {"job/cpu.max": "max 100000\n"}, False),                 # v2, no limit
    ("0::/job\n", {"job/cpu.max": "200000 100000\n"}, True),               # v2, 2 CPUs
    ("4:memory:/m\n1:cpu,cpuacct:/c\n", {"cpu,cpuacct/c/cpu.cfs_quota_us": "-1\n"}, False),
    ("4:memory:/m\n1:cpu,cpuacct:/c\n", {"cpu/c/cpu.cfs_quota_us": "150000\n"}, True),
    ("0::/gone\n", {}, False),                                              # unreadable: no quota seen
    ("garbage\n0::/job\n", {"job/cpu.max": "50000 100000\n"}, True),      # odd lines skipped
])
def test_cpu_quota_detection(tmp_path, cgroup, files, limited):
    from cybn._threads import cpu_quota_limited
    (tmp_path / "cgroup").write_text(cgroup)
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    assert cpu_quota_limited(str(tmp_path / "cgroup"), str(tmp_path / "fs")) is limited
