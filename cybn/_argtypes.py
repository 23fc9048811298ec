"""argparse ``type=`` functions made from checkers, so the CLI and the experiments' commands
validate their options with one set of rules and one message style.

``arg_type(check, convert)`` converts the option's text, then lets ``check`` (any checker that
raises TypeError/ValueError naming the problem) judge the value; argparse prints the message.
"""
import argparse
import math


def arg_type(check, convert=str, expected=None):
    """An argparse type: ``convert(text)`` (a failure says ``expected``), then ``check(value)``
    judges it; the converted value is the option's value (whatever ``check`` returns)."""
    expected = expected or getattr(convert, "__name__", "a value")

    def parse(text):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            check(value)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    parse.__name__ = getattr(check, "__name__", "value").lstrip("_")
    return parse


def _at_least_one(value):
    if value < 1:
        raise ValueError(f"expected a positive integer, got {value}")


def _finite_nonnegative(value):
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a finite number >= 0, got {value}")


def _finite_positive(value):
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a finite number > 0, got {value}")


def _probability(value):
    if not 0 <= value < 1:
        raise ValueError(f"expected a probability in [0, 1), got {value}")


positive_int = arg_type(_at_least_one, int, "a positive integer")
probability = arg_type(_probability, float, "a number")
nonnegative_float = arg_type(_finite_nonnegative, float, "a number")
positive_float = arg_type(_finite_positive, float, "a number")


def comma_list(kind=str):
    """``"a,b,,c"`` -> ``("a", "b", "c")``, each item converted by ``kind``."""
    def parse(text):
        try:
            return tuple(kind(v) for v in text.split(",") if v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse
