"""A small progress bar on stderr (no dependency): redraws in place on a terminal, prints a
line every ~10% otherwise (CI logs), and is silent when disabled."""
import sys
import time


class Progress:
    def __init__(self, total, desc="", unit="it", enabled=True, stream=None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = 0
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
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        elif self.total:
            decile = int(10 * self.n / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(now) + "\n")

    def _line(self, now):
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            eta = (self.total - self.n) / rate if rate > 0 else 0.0
            text = f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.1f} {self.unit}/s eta {eta:.0f}s"
        else:
            text = f"{self.desc} {self.n} {self.unit} {rate:.1f} {self.unit}/s"
        return f"{text} {self.postfix}".rstrip()

    def close(self):
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
