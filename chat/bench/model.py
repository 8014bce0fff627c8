"""What the parent tells a load process: picklable, frozen values."""

from __future__ import annotations

import attrs

PASSWORD = "bench-password"
DEFAULT_PREFIX = "bench"


@attrs.frozen
class BenchConfig:
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (6000,)
    users: int = 100
    messages: int = 100
    group_size: int = 50
    rate: float = 1000.0
    duration: float = 10.0
    group_rate: float = 0.0
    """Group messages per second; 0: closed loop (each sent after the last one's ``ok``)."""
    procs: int = 1
    seed: int = 1
    prefix: str = DEFAULT_PREFIX
    run_id: str = "run"
    """Unique per run: events of earlier runs (kept messages) are recognised and skipped."""
    login_concurrency: int = 32
    """Logins in flight per load process (the server hashes two at a time anyway)."""
    drain_seconds: float = 30.0
    """After the last send, how long to wait for outstanding deliveries before calling them lost."""
    setup_seconds: float = 1800.0
    """Upper bound for a setup phase (registering 10,000 accounts takes minutes by design)."""

    def user_name(self, index: int) -> str:
        return f"{self.prefix}-u{index}"

    def port_for(self, index: int) -> int:
        return self.ports[index % len(self.ports)]


@attrs.frozen
class Job:
    """One load process's share of a scenario."""

    scenario: str
    config: BenchConfig
    worker: int
    users: tuple[int, ...]
    """Global user indexes this process drives."""
