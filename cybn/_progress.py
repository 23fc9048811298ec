"""One small progress bar on stderr (no dependency), for training epochs and downloads.

On a terminal it redraws in place (at most every 0.1 s); otherwise (CI logs, files) it prints a
line at each 10 % step; disabled, it is silent. ``scale``/``unit`` show amounts such as bytes
as MiB; ``initial`` starts from work already done (a resumed download) without counting it in
the rate.
"""
import sys
import time


class Progress:
    def __init__(self, total, desc="", unit="it", enabled=True, stream=None, initial=0, scale=1):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.scale = scale
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = self.initial = initial
        self.postfix = ""
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n=1, postfix=None):
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            if now - self._last_draw >= 0.1 or self.n == self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line(now))
                self.stream.flush()
        elif self.total:
            decile = min(10, int(10 * self.n / self.total))
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line(now) + "\n")
                self.stream.flush()

    def _amount(self, v):
        return f"{v / self.scale:.1f}" if self.scale != 1 else str(v)

    def line(self, now=None):
        elapsed = (now or time.perf_counter()) - self._start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        speed = f"{self._amount(rate)} {self.unit}/s"
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            eta = (self.total - self.n) / rate if rate > 0 else 0.0
            text = (f"{self.desc} {100 * frac:3.0f}% [{bar}] {self._amount(self.n)}/{self._amount(self.total)} "
                    f"{self.unit} {speed} eta {eta:.0f}s")
        else:
            text = f"{self.desc} {self._amount(self.n)} {self.unit} {speed}"
        return f"{text} {self.postfix}".rstrip()

    def close(self):
        if self.enabled and self._tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
