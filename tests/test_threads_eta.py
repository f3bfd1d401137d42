"""The thread-count choice and the ETA smoother (pure logic, no processes)."""

from __future__ import annotations

import pytest

from infllm_cli.errors import UsageError
from infllm_cli.eta import EtaEstimator, format_duration
from infllm_cli.threads import CpuFacts, choose_threads


def facts(logical=8, usable=None, physical=4, quota=None, load=0.0, busy=None) -> CpuFacts:
    return CpuFacts(logical=logical, usable=logical if usable is None else usable, physical=physical, quota=quota,
                    load=load, busy=busy)


def test_idle_machine_uses_physical_cores_not_logical() -> None:
    choice = choose_threads(None, None, facts(logical=8, physical=4, load=0.1))
    assert choice.threads == 4 and "physical" in choice.reason


def test_busy_machine_leaves_the_busy_cpus_alone() -> None:
    # two CPUs, one kept busy by another process: one thread, not two fighting over one core
    assert choose_threads(None, None, facts(logical=2, physical=2, load=1.0)).threads == 1
    # more load than CPUs: still at least one thread
    assert choose_threads(None, None, facts(logical=2, physical=2, load=7.0)).threads == 1
    # hyper-threads: 4 busy logical CPUs of 16 leave all 8 physical cores usable
    assert choose_threads(None, None, facts(logical=16, physical=8, load=4.0)).threads == 8


def test_busy_now_overrides_a_stale_load_average() -> None:
    # the previous run ended a moment ago: the load average still says 1.8, the sample says idle
    choice = choose_threads(None, None, facts(logical=2, physical=2, load=1.8, busy=0.05))
    assert choice.threads == 2
    # a competitor that just started: the load average has not seen it yet, the sample has
    choice = choose_threads(None, None, facts(logical=2, physical=2, load=0.1, busy=1.0))
    assert choice.threads == 1 and "busy now 1.0 of 2 CPUs" in choice.reason


def test_busy_cpus_from_proc_stat_counters() -> None:
    from infllm_cli.threads import busy_cpus

    # user nice system idle iowait irq softirq steal: 300 of 400 jiffies idle or waiting -> a quarter busy
    assert busy_cpus([0] * 8, [60, 0, 40, 250, 50, 0, 0, 0], 8) == pytest.approx(2.0)
    assert busy_cpus([5] * 8, [5] * 8, 8) is None  # no time passed
    assert busy_cpus([0] * 8, [100, 0, 0, 0, 0, 0, 0, 0], 2) == pytest.approx(2.0)


def test_affinity_and_quota_bound_the_choice_and_make_load_irrelevant() -> None:
    # the load average describes the whole machine; with a restricted affinity it is not ours to subtract
    assert choose_threads(None, None, facts(logical=64, usable=4, physical=4, load=60.0)).threads == 4
    assert choose_threads(None, None, facts(logical=64, physical=32, quota=2.5, load=60.0)).threads == 2


def test_option_then_environment_win() -> None:
    f = facts(logical=2, physical=2, load=9.0)
    assert choose_threads(3, "5", f) == choose_threads("3", None, f)
    assert choose_threads(None, "5", f).threads == 5 and choose_threads(None, "5", f).reason == "INFLLM_THREADS"
    assert choose_threads(None, "  ", f).threads == 1  # empty: as if unset


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_invalid_counts_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--threads"):
        choose_threads(bad, None, facts())
    if bad.strip():
        with pytest.raises(UsageError, match="INFLLM_THREADS"):
            choose_threads(None, bad, facts())


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(cost, total: int, chunk: int, until: int, noise=lambda i: 1.0) -> EtaEstimator:
    """Feed chunks whose seconds/token is ``cost(position)`` up to ``until`` tokens."""
    clock = FakeClock()
    eta = EtaEstimator(clock=clock, min_seconds=0.0)
    eta.start(0)
    done = 0
    for i in range(until // chunk):
        clock.t += cost(done + chunk / 2) * chunk * noise(i)
        done += chunk
        eta.update(done)
    return eta


def test_constant_speed_gives_the_exact_eta() -> None:
    eta = run(lambda x: 1e-3, total=100_000, chunk=1000, until=20_000)
    assert eta.rate() == pytest.approx(1000.0)
    assert eta.remaining(100_000) == pytest.approx(80.0)


def test_growing_cost_is_accounted_for() -> None:
    cost = lambda x: 1e-3 + 1e-8 * x  # noqa: E731 - seconds per token growing with the position
    eta = run(cost, total=1_000_000, chunk=8192, until=200_704)
    d, t = 200_704, 1_000_000
    exact = 1e-3 * (t - d) + 1e-8 * (t * t - d * d) / 2
    assert eta.remaining(t) == pytest.approx(exact, rel=0.02)
    naive = (t - d) / eta.rate()  # the current speed held to the end would be 40% optimistic
    assert naive < 0.75 * exact


def test_noise_is_smoothed_and_a_slowdown_shows_within_a_few_chunks() -> None:
    jitter = lambda i: 1.5 if i % 2 else 0.5  # noqa: E731 - alternating fast and slow chunks
    eta = run(lambda x: 1e-3, total=100_000, chunk=1000, until=40_000, noise=jitter)
    assert eta.remaining(100_000) == pytest.approx(60.0, rel=0.15)
    # the machine becomes 3x slower: after 15 chunks the estimate has followed
    clock = FakeClock()
    eta = EtaEstimator(clock=clock, min_seconds=0.0)
    eta.start(0)
    done = 0
    for i in range(40):
        clock.t += (1e-3 if i < 25 else 3e-3) * 1000
        done += 1000
        eta.update(done)
    assert eta.rate() == pytest.approx(1000 / 3, rel=0.1)


def test_unknown_before_any_sample_and_formatting() -> None:
    eta = EtaEstimator(clock=FakeClock())
    assert eta.rate() is None and eta.remaining(10) is None
    assert format_duration(None) == "?" and format_duration(75) == "1:15" and format_duration(3725) == "1:02:05"


def test_rates_read_well_at_any_speed() -> None:
    from infllm_cli.progress import format_rate

    assert format_rate(5279.4) == "5,279" and format_rate(12.0) == "12"
    assert format_rate(0.27) == "0.27" and format_rate(3.456) == "3.5"  # trials per second, not "0"


def test_an_explicit_thread_count_skips_the_cpu_sample(monkeypatch) -> None:
    import infllm_cli.threads as threads

    def no_sampling(seconds: float = 0.2):
        raise AssertionError("sampled /proc/stat although the thread count was given")

    monkeypatch.setattr(threads, "_sample_busy", no_sampling)
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    assert threads.configure_threads(1).threads == 1
    monkeypatch.setenv(threads.ENV_THREADS, "1")
    assert threads.configure_threads(None).reason == threads.ENV_THREADS
