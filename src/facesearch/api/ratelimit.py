"""Rate limits on sign-in, search and case export, per account and per source address.

One :class:`RateLimiter` is built at start-up from the settings (:meth:`RateLimiter.from_settings`)
and kept on the application (``app.state.limits``); routes call :meth:`RateLimiter.hit` before they
do any work, and a refused request raises :class:`facesearch.errors.RateLimited`, which the HTTP
layer answers with 429, ``Retry-After`` (whole seconds) and the catalogue's error body.

Algorithm: a token bucket per (rule, key). A rule allows ``limit`` requests per ``window_s``
seconds: the bucket holds at most ``limit`` tokens and refills continuously at
``limit / window_s`` tokens a second, so a burst of ``limit`` is allowed and after that one request
every ``window_s / limit`` seconds. A full bucket is the same as no bucket, so idle keys are
dropped (memory stays bounded by the keys active in the last window). Thread-safe (one lock;
each check is a few arithmetic operations); the clock is injected (``time.monotonic`` by default).

Scope: the buckets live in the server process. Several server processes behind one proxy each
keep their own (the effective limit is multiplied by the process count); a shared store would be
needed for a strict limit across processes.

The source address (:func:`client_address`): the TCP peer, unless the peer is one of the
configured reverse proxies (``FACESEARCH_TRUSTED_PROXIES``: addresses or networks, comma
separated, empty by default). Only then is ``X-Forwarded-For`` read, from the right: each proxy
appends the address it received the request from, so the right-most entry that is not itself a
trusted proxy is the client. Entries further left were written by the client and are never
trusted, so a client cannot pick its own address to escape the per-address limit. ``serve``
runs uvicorn with its own proxy-header handling off, so this is the one place that decides.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from facesearch.config import Settings
from facesearch.errors import RateLimited

__all__ = ["Action", "Rule", "RateLimiter", "client_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(str, Enum):
    LOGIN = "login"
    SEARCH = "search"
    EXPORT = "export"


@dataclass(frozen=True)
class Rule:
    """``limit`` requests per ``window_s`` seconds; ``limit <= 0`` switches the rule off."""

    limit: int
    window_s: float

    @property
    def rate(self) -> float:
        return self.limit / self.window_s


@dataclass
class _Bucket:
    tokens: float
    at: float


_MESSAGES = {
    Action.LOGIN: "too many sign-in attempts",
    Action.SEARCH: "too many searches",
    Action.EXPORT: "too many case exports",
}


class RateLimiter:
    """Token buckets for (action, "account" | "address") rules."""

    def __init__(self, rules: dict[tuple[Action, str], Rule], clock: Callable[[], float] = time.monotonic,
                 trusted_proxies: Iterable[Network] = ()) -> None:
        for (action, per), rule in rules.items():
            if per not in ("account", "address") or rule.window_s <= 0:
                raise ValueError(f"bad rate limit rule {action}/{per}: {rule}")
        self.rules = dict(rules)
        self.clock = clock
        self.trusted_proxies = tuple(trusted_proxies)
        self._buckets: dict[tuple[Action, str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    @classmethod
    def from_settings(cls, s: Settings, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        w = float(s.rate_limit_window_s)
        rules = {
            (Action.LOGIN, "address"): Rule(s.rate_limit_login_per_address, w),
            (Action.LOGIN, "account"): Rule(s.rate_limit_login_per_account, w),
            (Action.SEARCH, "address"): Rule(s.rate_limit_search_per_address, w),
            (Action.SEARCH, "account"): Rule(s.rate_limit_search_per_account, w),
            (Action.EXPORT, "address"): Rule(s.rate_limit_export_per_address, w),
            (Action.EXPORT, "account"): Rule(s.rate_limit_export_per_account, w),
        }
        return cls(rules, clock=clock, trusted_proxies=parse_networks(s.trusted_proxies))

    def hit(self, action: Action, *, account: str | None, address: str | None) -> None:
        """Count one request of ``account`` from ``address``; raise :class:`RateLimited` (with
        the seconds until it would be allowed) when either bucket is empty. A refused request
        takes no token from either bucket, so retrying after ``Retry-After`` succeeds."""
        keys = [(per, _bounded(key)) for per, key in (("account", account), ("address", address)) if key is not None]
        with self._lock:
            now = self.clock()
            self._sweep(now)
            wait = 0.0
            buckets: list[_Bucket] = []
            for per, key in keys:
                rule = self.rules.get((action, per))
                if rule is None or rule.limit <= 0:
                    continue
                b = self._refilled(action, per, key, rule, now)
                if b.tokens < 1.0:
                    wait = max(wait, (1.0 - b.tokens) / rule.rate)
                buckets.append(b)
            if wait > 0:
                raise RateLimited(max(1, math.ceil(wait)), f"{_MESSAGES[action]}; try again later")
            for b in buckets:
                b.tokens -= 1.0

    def _refilled(self, action: Action, per: str, key: str, rule: Rule, now: float) -> _Bucket:
        b = self._buckets.get((action, per, key))
        if b is None:
            b = self._buckets[(action, per, key)] = _Bucket(float(rule.limit), now)
        else:
            b.tokens = min(float(rule.limit), b.tokens + max(0.0, now - b.at) * rule.rate)
            b.at = now
        return b

    def _sweep(self, now: float) -> None:
        """Drop buckets that have refilled completely (they equal a fresh one)."""
        if now < self._next_sweep:
            return
        longest = max((r.window_s for r in self.rules.values()), default=60.0)
        self._next_sweep = now + longest
        for k, b in list(self._buckets.items()):
            rule = self.rules[(k[0], k[1])]
            if b.tokens + (now - b.at) * rule.rate >= rule.limit:
                del self._buckets[k]

    def active_keys(self) -> int:
        with self._lock:
            return len(self._buckets)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        return client_address(peer, forwarded_for, self.trusted_proxies)


def _bounded(key: str) -> str:
    """A long key (a megabyte-long "user name") is kept as its digest: memory stays bounded."""
    return key if len(key) <= 128 else "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def parse_networks(spec: str | Iterable[str] | None) -> tuple[Network, ...]:
    """``"10.0.0.1, 192.168.0.0/24"`` -> networks (a bare address is a /32 or /128)."""
    if not spec:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        item = item.strip()
        if item:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"FACESEARCH_TRUSTED_PROXIES: {item!r} is not an address or network") from None
    return tuple(out)


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str | None:
    """The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
    ``X-Forwarded-For`` entry that is not a trusted proxy (see the module's docstring)."""
    if peer is None or not trusted or not _in(peer, trusted) or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed entry: do not guess, limit the proxy's own address
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer
