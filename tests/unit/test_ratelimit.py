"""The rate limiter on its own: token buckets with an injected clock, per account and per address,
thread safety, memory bound, and which X-Forwarded-For entry is believed."""
from __future__ import annotations

import threading

import pytest

from facesearch.api.ratelimit import Action, RateLimiter, Rule, client_address, parse_networks
from facesearch.config import Settings
from facesearch.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limiter(clock: Clock, account: int = 3, address: int = 5, window: float = 60.0) -> RateLimiter:
    return RateLimiter({(Action.LOGIN, "account"): Rule(account, window),
                        (Action.LOGIN, "address"): Rule(address, window)}, clock=clock)


def test_a_burst_up_to_the_limit_passes_then_429_with_the_wait() -> None:
    clock = Clock()
    rl = limiter(clock)
    for _ in range(3):
        rl.hit(Action.LOGIN, account="alice", address="10.0.0.1")
    with pytest.raises(RateLimited) as e:
        rl.hit(Action.LOGIN, account="alice", address="10.0.0.1")
    assert e.value.code == "rate_limited" and e.value.http_status == 429
    assert e.value.retry_after_s == 20  # one token every 60/3 s
    clock.t += 19.5
    with pytest.raises(RateLimited) as e:
        rl.hit(Action.LOGIN, account="alice", address="10.0.0.1")
    assert e.value.retry_after_s == 1
    clock.t += 0.5
    rl.hit(Action.LOGIN, account="alice", address="10.0.0.1")  # exactly when Retry-After said


def test_refused_requests_take_no_token() -> None:
    clock = Clock()
    rl = limiter(clock, account=1)
    rl.hit(Action.LOGIN, account="a", address="x")
    for _ in range(50):
        with pytest.raises(RateLimited):
            rl.hit(Action.LOGIN, account="a", address="x")
    clock.t += 60
    rl.hit(Action.LOGIN, account="a", address="x")


def test_account_and_address_are_limited_separately() -> None:
    clock = Clock()
    rl = limiter(clock, account=3, address=5)
    # one address trying many accounts: stopped by the address rule
    for i in range(5):
        rl.hit(Action.LOGIN, account=f"user{i}", address="10.0.0.9")
    with pytest.raises(RateLimited):
        rl.hit(Action.LOGIN, account="user99", address="10.0.0.9")
    # one account tried from many addresses: stopped by the account rule
    for i in range(3):
        rl.hit(Action.LOGIN, account="bob", address=f"10.0.1.{i}")
    with pytest.raises(RateLimited):
        rl.hit(Action.LOGIN, account="bob", address="10.0.1.200")
    # others are not affected
    rl.hit(Action.LOGIN, account="carol", address="10.0.2.1")


def test_actions_have_their_own_buckets_and_a_zero_limit_is_off() -> None:
    clock = Clock()
    rl = RateLimiter({(Action.SEARCH, "account"): Rule(1, 60), (Action.EXPORT, "account"): Rule(0, 60)}, clock=clock)
    rl.hit(Action.SEARCH, account="u", address=None)
    with pytest.raises(RateLimited):
        rl.hit(Action.SEARCH, account="u", address=None)
    for _ in range(100):
        rl.hit(Action.EXPORT, account="u", address=None)  # off
        rl.hit(Action.LOGIN, account="u", address=None)  # no rule


def test_idle_buckets_are_dropped() -> None:
    clock = Clock()
    rl = limiter(clock)
    for i in range(1000):
        rl.hit(Action.LOGIN, account=f"u{i}", address=f"a{i}")
    assert rl.active_keys() == 2000
    clock.t += 61
    rl.hit(Action.LOGIN, account="x", address="y")
    assert rl.active_keys() == 2


def test_concurrent_hits_never_exceed_the_limit() -> None:
    rl = RateLimiter({(Action.SEARCH, "account"): Rule(100, 3600)})
    allowed = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            try:
                rl.hit(Action.SEARCH, account="same", address=None)
            except RateLimited:
                continue
            with lock:
                allowed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 100


def test_defaults_come_from_the_settings() -> None:
    s = Settings(rate_limit_login_per_address=7, trusted_proxies="10.0.0.0/8, ::1")
    rl = RateLimiter.from_settings(s)
    assert rl.rules[(Action.LOGIN, "address")] == Rule(7, 60.0)
    assert rl.rules[(Action.LOGIN, "account")].limit == 5
    assert rl.rules[(Action.SEARCH, "account")].limit == 30
    assert rl.rules[(Action.EXPORT, "account")].limit == 10
    assert len(rl.trusted_proxies) == 2
    with pytest.raises(ValueError):
        parse_networks("not-an-address")


@pytest.mark.parametrize("peer,xff,want", [
    ("203.0.113.5", None, "203.0.113.5"),                          # direct client
    ("203.0.113.5", "1.2.3.4", "203.0.113.5"),                     # an untrusted peer's header is ignored
    ("10.0.0.2", "198.51.100.7", "198.51.100.7"),                  # through our proxy
    ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),         # a forged left-hand entry is ignored
    ("10.0.0.2", "198.51.100.7, 10.0.0.3", "198.51.100.7"),        # two of our proxies
    ("10.0.0.2", "garbage", "10.0.0.2"),                           # malformed: the proxy itself
    ("10.0.0.2", None, "10.0.0.2"),
    ("testclient", "1.2.3.4", "testclient"),
])
def test_client_address_believes_only_trusted_proxies(peer: str, xff: str | None, want: str) -> None:
    assert client_address(peer, xff, parse_networks("10.0.0.0/24")) == want


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"


def test_long_keys_share_a_bucket_by_digest_and_stay_small() -> None:
    clock = Clock()
    rl = limiter(clock, account=1)
    huge = "a" * 1_000_000
    rl.hit(Action.LOGIN, account=huge, address="x")
    with pytest.raises(RateLimited):
        rl.hit(Action.LOGIN, account=huge, address="y")
    assert all(len(k[2]) <= 128 for k in rl._buckets)
