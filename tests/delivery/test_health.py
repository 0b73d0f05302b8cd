"""Circuit breakers: open on consecutive transport failures, probe once, close on success."""

from __future__ import annotations

from bot.delivery.health import Admission, CircuitBreakers, HealthState
from bot.domain.clock import FakeClock


def test_opens_after_threshold_then_probes_one_at_a_time() -> None:
    clock = FakeClock()
    changes: list[str] = []
    breakers = CircuitBreakers(clock.now, threshold=3, cooldown=5)
    breakers.on_change.append(lambda h: changes.append(h.state.value))
    for _ in range(2):
        breakers.failed("smtp", "refused")
    assert breakers.admit("smtp") == Admission.SEND
    breakers.failed("smtp", "refused")
    assert breakers.admit("smtp") == Admission.BLOCKED
    assert breakers.is_down("smtp")
    clock.advance(5)
    assert breakers.admit("smtp") == Admission.PROBE
    assert breakers.admit("smtp") == Admission.BLOCKED  # one probe at a time
    breakers.failed("smtp", "refused")
    [health] = breakers.snapshot()
    assert health.state == HealthState.DOWN
    clock.advance(5)
    assert breakers.admit("smtp") == Admission.BLOCKED  # cool-down doubled after a failed probe
    clock.advance(5)
    assert breakers.admit("smtp") == Admission.PROBE
    breakers.succeeded("smtp")
    assert breakers.admit("smtp") == Admission.SEND
    assert changes == ["down", "probing", "down", "probing", "up"]


def test_an_answer_resets_the_count() -> None:
    breakers = CircuitBreakers(FakeClock().now, threshold=3)
    breakers.failed("slack", "timeout")
    breakers.failed("slack", "timeout")
    breakers.succeeded("slack")
    breakers.failed("slack", "timeout")
    breakers.failed("slack", "timeout")
    assert breakers.admit("slack") == Admission.SEND
