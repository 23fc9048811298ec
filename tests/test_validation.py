"""cybn._validation: the one error policy (TypeError for a wrong type, ValueError for a wrong value,
messages naming the argument and what was found) and the argparse types built from it."""
import argparse
import fractions

import numpy as np
import pytest

from cybn import _validation as V

NOT_INTS = [True, np.True_, 2.7, 2.0, np.float64(3.0), "3", None, [1], np.array(3), 1j]
NOT_REALS = [True, np.False_, "0.1", None, [0.1], np.array([0.1]), np.array(0.1), 1j]


@pytest.mark.parametrize("checker,good,bad_values", [
    (V.positive_int, [(1, 1), (np.int64(7), 7), (2**40, 2**40)], [0, -1, -2**70]),
    (V.nonnegative_int, [(0, 0), (np.uint8(3), 3)], [-1, -2**70]),
])
def test_integer_checkers(checker, good, bad_values):
    for v, want in good:
        got = checker(v, "n")
        assert got == want and type(got) is int
    for v in bad_values:
        with pytest.raises(ValueError, match=f"n must be >= {1 if checker is V.positive_int else 0}, got {v}"):
            checker(v, "n")
    for v in NOT_INTS:  # bools are not counts, 2.7 is never truncated, 2.0 is still a float
        with pytest.raises(TypeError, match=f"n must be an integer, got {type(v).__name__}"):
            checker(v, "n")
    with pytest.raises(ValueError, match="n must be <= 5, got 6"):
        checker(6, "n", 5)
    with pytest.raises(ValueError, match=f"n must be <= {V.MAX_INT}"):
        checker(2**31, "n", V.MAX_INT)
    with pytest.raises(ValueError, match="must be <= 2147483647"):
        checker(10**30, "n", V.MAX_INT)  # huge ints are compared exactly, never wrapped


def test_integer_bounds():
    assert V.integer(-3, "k") == -3
    assert V.integer(2, "count", minimum=2) == 2
    with pytest.raises(ValueError, match="count must be >= 2, got 1"):
        V.integer(1, "count", minimum=2)
    assert V.is_integer(np.int32(1)) and not V.is_integer(True) and not V.is_integer(1.0)


def test_pair():
    assert V.pair(3, "k") == (3, 3)
    assert V.pair((2, np.int64(5)), "k") == (2, 5)
    assert V.pair([0, 1], "padding", V.nonnegative_int) == (0, 1)
    with pytest.raises(ValueError, match=r"k must be an int or a pair \(h, w\), got \(1, 2, 3\)"):
        V.pair((1, 2, 3), "k")
    with pytest.raises(TypeError, match="k must be an integer, got float 2.5"):
        V.pair((1, 2.5), "k")
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        V.pair((1, 0), "stride")
    with pytest.raises(ValueError, match="k must be <= 2147483647"):
        V.pair(2**31, "k")


def test_flag():
    assert V.flag(True, "bias") is True and V.flag(np.False_, "bias") is False
    for v in (1, 0, "yes", None, np.array([True])):
        with pytest.raises(TypeError, match=f"bias must be a bool \\(True or False\\), got {type(v).__name__}"):
            V.flag(v, "bias")


@pytest.mark.parametrize("checker,good,bad,want", [
    (V.finite_float, [-1e300, 0, 2, np.float32(0.5), fractions.Fraction(1, 4)], [], "a finite number"),
    (V.nonnegative_float, [0, 0.0, 3, 1e300], [-1e-300, -1], "a finite number >= 0"),
    (V.positive_float, [1e-300, 5], [0, 0.0, -2], "a finite number > 0"),
])
def test_real_checkers(checker, good, bad, want):
    for v in good:
        got = checker(v, "lr")
        assert type(got) is float and got == float(v)
    for v in bad + [float("nan"), float("inf"), -float("inf"), np.float32("nan")]:
        with pytest.raises(ValueError, match=f"lr must be {want}, got"):
            checker(v, "lr")
    with pytest.raises(ValueError, match=f"lr must be {want}, got an integer too large for a float"):
        checker(10**400, "lr")
    for v in NOT_REALS:
        with pytest.raises(TypeError, match=f"lr must be a real number, got {type(v).__name__}"):
            checker(v, "lr")


def test_real_intervals():
    assert V.real(1, "p", 0, 1) == 1.0
    for v, message in ((1.5, r"in \[0, 1\]"), (-0.1, r"in \[0, 1\]")):
        with pytest.raises(ValueError, match=f"p must be a finite number {message}, got {v}"):
            V.real(v, "p", 0, 1)
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1.0"):
        V.real(1.0, "dropout", 0.0, 1.0, exclusive_maximum=True)
    with pytest.raises(ValueError, match="<= 2, got 3.0"):
        V.real(3, "x", maximum=2)
    long = "x" * 100
    with pytest.raises(TypeError, match=r"got str 'x{20,}\.\.\. \(102 characters\)"):
        V.real(long, "x")  # long values are cut in the message


def test_choice_dtype_generator_arrays():
    assert V.choice("all", "bn", ("none", "all")) == "all"
    with pytest.raises(ValueError, match=r"bn must be one of \('none', 'all'\), got 'some'"):
        V.choice("some", "bn", ("none", "all"))
    with pytest.raises(TypeError, match="bn must be one of .*got int 3"):
        V.choice(3, "bn", ("none", "all"))
    assert V.float_dtype("float32") == np.float32 and V.float_dtype(np.float64) == np.float64
    for bad in (np.int32, "float16", "nonsense", object):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            V.float_dtype(bad)
    g = np.random.default_rng(0)
    assert V.generator(g) is g
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, got int 3"):
        V.generator(3)
    assert V.as_generator(g) is g and isinstance(V.as_generator(None), np.random.Generator)
    np.testing.assert_array_equal(V.as_generator(3).random(2), np.random.default_rng(3).random(2))
    with pytest.raises(ValueError, match=r"rng \(an int seed\) must be >= 0, got -1"):
        V.as_generator(-1)
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, an int seed or None"):
            V.as_generator(bad)
    x = np.ones((2, 3), np.float32)
    assert V.check_float_array(x, "x", 2) is x
    f = np.asfortranarray(np.ones((2, 3)))
    assert V.check_float_array(f, "x") is f and V.float_array(f, "x").flags.c_contiguous
    with pytest.raises(TypeError, match="x must be a plain numpy.ndarray, got the subclass MaskedArray"):
        V.float_array(np.ma.masked_array(x), "x")
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        V.float_array([1.0], "x")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        V.float_array(np.ones(2, np.int64), "x")
    with pytest.raises(TypeError, match="w has dtype float64 but the other operands are float32"):
        V.float_array(np.ones(2), "w", dtype=x.dtype)
    with pytest.raises(ValueError, match=r"x must have 2 or 4 dimensions, got shape \(3,\)"):
        V.float_array(np.ones(3), "x", (2, 4))
    with pytest.raises(ValueError, match=r"b must have shape \(3,\), got \(2,\)"):
        V.shape_is(np.ones(2), (3,), "b")
    with pytest.raises(TypeError, match="images must be uint8"):
        V.uint8_images(np.ones((1, 1, 2, 2)))


def test_conv_output_size():
    assert V.conv_output_size((32, 31), 3, 1, 1) == (32, 31)
    assert V.conv_output_size((7, 8), (3, 2), (2, 3), (1, 0)) == ((7 + 2 - 3) // 2 + 1, (8 - 2) // 3 + 1)
    assert V.conv_output_size(5, 2, 2, 0) == (2, 2)  # floor mode


@pytest.mark.parametrize("checker,text,want", [
    (V.positive_int, "12", 12), (V.positive_int, " 3 ", 3), (V.nonnegative_int, "0", 0),
    (V.nonnegative_float, "0", 0.0), (V.nonnegative_float, "1e-3", 1e-3), (V.positive_float, "2.5", 2.5),
    (V.finite_float, "-7", -7.0),
])
def test_from_text_and_arg_type_accept(checker, text, want):
    assert V.from_text(text, checker, "--x") == want
    assert V.arg_type(checker)(text) == want


@pytest.mark.parametrize("checker,text,message", [
    (V.positive_int, "0", "value must be >= 1, got 0"),
    (V.positive_int, "2.7", "value must be an integer, got '2.7'"),
    (V.positive_int, "", "value must be an integer, got ''"),
    (V.nonnegative_int, "-1", "value must be >= 0, got -1"),
    (V.nonnegative_float, "-1", "value must be a finite number >= 0, got -1.0"),
    (V.nonnegative_float, "inf", "value must be a finite number >= 0, got inf"),
    (V.positive_float, "0", "value must be a finite number > 0, got 0.0"),
    (V.finite_float, "nan", "value must be a finite number, got nan"),
    (V.finite_float, "abc", "value must be a number, got 'abc'"),
])
def test_from_text_and_arg_type_reject(checker, text, message):
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        V.from_text(text, checker)
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(")):
        V.arg_type(checker)(text)


def test_arg_type_in_a_parser(capsys):
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--epochs", type=V.arg_type(V.positive_int, maximum=1000))
    p.add_argument("--lr", type=V.arg_type(V.nonnegative_float, name="the learning rate"))
    a = p.parse_args(["--epochs", "5", "--lr", "0.1"])
    assert (a.epochs, a.lr) == (5, 0.1)
    for argv, message in ((["--epochs", "0"], "argument --epochs: value must be >= 1, got 0"),
                          (["--epochs", "1001"], "argument --epochs: value must be <= 1000, got 1001"),
                          (["--lr", "-1"], "argument --lr: the learning rate must be a finite number >= 0")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert V.arg_type(V.positive_int).__name__ == "positive_int"


def test_from_text_wants_text():
    with pytest.raises(TypeError, match="CYBN_NUM_THREADS must be given as text, got int 3"):
        V.from_text(3, V.positive_int, "CYBN_NUM_THREADS")
