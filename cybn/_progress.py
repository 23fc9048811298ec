"""Progress bars on stderr (tqdm) for training epochs, evaluation and downloads.

On a terminal tqdm redraws in place. Anywhere else (CI logs, ``2> file``) a redraw every 0.1 s
would fill the file with carriage returns, so the bar prints a whole line at most every
``LOG_INTERVAL`` seconds, plus the final one. ``enabled=False`` (``--quiet``) prints nothing.
"""
import sys

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between lines in a log file


class _Lines:
    """A stream for tqdm that turns its in-place redraws (``\\r`` + line) into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self):
        self.stream.flush()


def Progress(total, desc="", unit="it", enabled=True, stream=None, initial=0, scale=1):
    """A tqdm bar over ``total`` steps of ``unit``; ``initial`` is work done before (a resumed
    download), not counted in the rate. Any ``scale != 1`` means the counts are bytes (only
    that is used: tqdm shows them as k/M/G(i)B, and ``unit`` is ignored). Use ``update(n)``, ``set_postfix_str(text, refresh=False)``, ``close()``."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    sizes = dict(unit="B", unit_scale=True, unit_divisor=1024) if scale != 1 else dict(unit=unit)
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=tty, **sizes,
                file=stream if tty else _Lines(stream), mininterval=0.1 if tty else LOG_INTERVAL,
                maxinterval=LOG_INTERVAL, ascii=not tty, leave=True)
