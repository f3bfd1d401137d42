"""Time-remaining estimates from a smoothed, growing per-token cost.

Reading a document, the cost of a token is not quite constant: block scoring grows with the number of
memory blocks (a little), and anything else on the machine changes the speed (a lot, and for a while). A
plain "tokens so far / seconds so far" is too slow to react to the second and ignores the first; the rate of
the last chunk alone jumps around.

:class:`EtaEstimator` keeps an exponentially weighted linear fit of the seconds per token against the
position in the stream: ``cost(x) = a + b x``, with ``b >= 0``: the slope ``b`` from a fit over many chunks (weights decaying by
``slope_decay`` per chunk, so noise does not pass for growth), the level from the recent chunks only
(weights decaying by ``decay``, so a change of speed shows within a few chunks). The time
remaining is the integral of that cost from the tokens done to the total,
``a (T - d) + b (T^2 - d^2) / 2``: if the cost has been growing, the estimate says so instead of assuming
the current speed holds to the end.
"""

from __future__ import annotations

import time
from typing import Callable


class EtaEstimator:
    """Smoothed rate and time remaining of a task with a known total.

    Parameters
    ----------
    decay : weight kept by the earlier samples at each new one, for the level (0.85: about the last 7 chunks)
    slope_decay : the same for the slope (0.98: about the last 50 chunks)
    min_seconds : samples shorter than this are merged with the next (timer noise)
    clock : time source (tests pass a fake one)
    """

    def __init__(self, decay: float = 0.85, slope_decay: float = 0.98, min_seconds: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (0.0 < decay < 1.0 and 0.0 < slope_decay < 1.0):
            raise ValueError(f"decays must be in (0, 1), got {decay}, {slope_decay}")
        self.decay = decay
        self.slope_decay = slope_decay
        self.min_seconds = min_seconds
        self.clock = clock
        self._last_t: float | None = None
        self._last_n = 0
        self.done = 0
        # weighted sums of the recent samples (level) and for the least-squares fit of seconds/token (y) on
        # the position (x) over many samples (slope)
        self._s = [0.0, 0.0, 0.0]  # w, wx, wy
        self._l = [0.0, 0.0, 0.0, 0.0, 0.0]  # w, wx, wy, wxx, wxy

    def start(self, done: int = 0) -> None:
        self._last_t = self.clock()
        self._last_n = self.done = done

    def update(self, done: int) -> None:
        """``done`` tokens are finished now."""
        now = self.clock()
        if self._last_t is None:
            self._last_t, self._last_n, self.done = now, done, done
            return
        self.done = done
        dt, dn = now - self._last_t, done - self._last_n
        if dn <= 0 or dt < self.min_seconds:
            return
        self.add_sample((self._last_n + done) / 2, dt / dn)
        self._last_t, self._last_n = now, done

    def add_sample(self, position: float, seconds_per_token: float) -> None:
        """One measured cost (e.g. a chunk's) at its mid position."""
        x, y = position, seconds_per_token
        self._s = [v * self.decay + n for v, n in zip(self._s, (1.0, x, y))]
        self._l = [v * self.slope_decay + n for v, n in zip(self._l, (1.0, x, y, x * x, x * y))]

    def cost_model(self) -> tuple[float, float] | None:
        """``(a, b)`` of ``seconds/token = a + b * position``, or None before the first sample."""
        w, wx, wy, wxx, wxy = self._l
        if w == 0.0:
            return None
        mx, my = wx / w, wy / w
        var = wxx / w - mx * mx
        slope = (wxy / w - mx * my) / var if var > 1e-9 * max(1.0, mx * mx) else 0.0
        slope = max(0.0, slope)  # the cost does not shrink as the stream grows: a drop is a change of speed
        sw, swx, swy = self._s
        return swy / sw - slope * swx / sw, slope

    def rate(self) -> float | None:
        """Tokens per second now (smoothed), or None before the first sample."""
        model = self.cost_model()
        if model is None:
            return None
        cost = model[0] + model[1] * self.done
        return 1.0 / cost if cost > 0 else None

    def remaining(self, total: int) -> float | None:
        """Seconds to reach ``total``, or None before the first sample."""
        model = self.cost_model()
        if model is None:
            return None
        a, b = model
        d, t = float(self.done), float(max(total, self.done))
        seconds = a * (t - d) + b * (t * t - d * d) / 2
        if seconds < 0:  # a negative intercept from a steep fit: fall back to the current cost
            seconds = (a + b * d) * (t - d)
        return max(0.0, seconds)


def format_duration(seconds: float | None) -> str:
    """``1:02:03``, ``2:03`` or ``?`` (unknown)."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
