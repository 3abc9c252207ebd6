"""Progress bars that fit both a terminal and a log file (used by every layer, so it sits below them).

On a terminal (the bar's stream is a TTY) :func:`progress` is tqdm as usual. Otherwise (DP's runs
redirected to a file, CI, ``nohup``) a tqdm bar would write a carriage-return update for every
step; :class:`LogProgress` instead writes whole lines: one at the start, one at each 10 % of a
known total and one at the end, at most 12 per bar however slow the machine. Without a known
total it writes a line after 5 s, then after 10, 20, 40 ... s (a few lines per hour of work).
"""

from __future__ import annotations

import sys
import time


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class LogProgress:
    """The subset of tqdm's interface dp_sam2 uses (iterate, ``update``, ``set_postfix``, ``close``,
    ``with``), writing whole lines for logs."""

    def __init__(
        self,
        iterable=None,
        total=None,
        desc: str = "",
        unit: str = "it",
        unit_scale: bool = False,
        unit_divisor: int = 1000,
        initial: int = 0,
        file=None,
        disable: bool = False,
        **_ignored,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.unit_scale, self.unit_divisor, self.initial = unit_scale, unit_divisor, initial
        self.file, self.disable = file, disable
        self.n = initial
        self.postfix = ""
        self._start = time.monotonic()
        self._next_step = 1  # the next tenth of the total that earns a line
        self._next_time = 5.0  # without a total: seconds after the start of the next line
        self._closed = False
        self._write()

    # ------------------------------------------------------------------ tqdm's interface
    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or self._closed:
            return
        if self.total:
            tenth = int(10 * self.n / self.total) if self.total else 0
            if tenth >= self._next_step and self.n < self.total:
                self._next_step = tenth + 1
                self._write()
        elif time.monotonic() - self._start >= self._next_time:
            self._next_time *= 2
            self._write()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()

    # ------------------------------------------------------------------ output
    def _write(self) -> None:
        if self.disable:
            return
        from tqdm.std import tqdm

        line = tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self._start,
            ncols=100,
            prefix=self.desc,
            unit=self.unit,
            unit_scale=self.unit_scale,
            unit_divisor=self.unit_divisor,
            postfix=self.postfix or None,
            initial=self.initial,
        )
        stream = self.file if self.file is not None else sys.stderr
        stream.write(line.replace("\r", "") + "\n")
        stream.flush()


def progress(iterable=None, *, total=None, desc: str = "", disable: bool = False, file=None, **kwargs):
    """A tqdm bar on a terminal, a :class:`LogProgress` (a few whole lines) elsewhere."""
    stream = file if file is not None else sys.stderr
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, file=file, **kwargs)
    return LogProgress(iterable, total=total, desc=desc, disable=disable, file=file, **kwargs)


class _SilentProgress(LogProgress):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def progress_class(enabled: bool = True):
    """A bar class for libraries that take one (``huggingface_hub``'s ``tqdm_class``): ``None`` (the
    library's own bar) on a terminal, :class:`LogProgress` in a log, a silent one when not ``enabled``."""
    if not enabled:
        return _SilentProgress
    return None if _is_tty(sys.stderr) else LogProgress
