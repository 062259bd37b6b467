"""Authentication primitives: passwords, TOTP, lockout, tokens and sessions (all clock-injected)."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from facesearch.auth import lockout, passwords, tokens, totp
from facesearch.errors import (
    AccountLocked, AuthenticationFailed, FaceSearchError, PasswordPolicy, SessionExpired,
    TokenExpired, TokenInvalid,
)

FAST = passwords.Argon2Params(time_cost=1, memory_cost_kib=8, parallelism=1)
FAST_STRONGER = passwords.Argon2Params(time_cost=2, memory_cost_kib=8, parallelism=1)
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def at_unix(t: int) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


# --- passwords ------------------------------------------------------------------------------

def test_password_hash_is_argon2id_and_verifies_only_the_right_password() -> None:
    h = passwords.hash_password("correct horse battery", params=FAST)
    assert h.startswith("$argon2id$")
    assert "correct horse battery" not in h
    assert passwords.verify_password("correct horse battery", h, params=FAST) == (True, False)
    assert passwords.verify_password("correct horse batterY", h, params=FAST) == (False, False)


def test_same_password_hashes_differently_each_time() -> None:
    assert (passwords.hash_password("correct horse battery", params=FAST)
            != passwords.hash_password("correct horse battery", params=FAST))


def test_verify_flags_rehash_when_parameters_changed() -> None:
    old = passwords.hash_password("correct horse battery", params=FAST)
    assert passwords.verify_password("correct horse battery", old, params=FAST_STRONGER) == (
        True, True)
    assert passwords.verify_password("wrong horse battery", old, params=FAST_STRONGER) == (
        False, False)


def test_password_is_nfkc_normalised() -> None:
    h = passwords.hash_password("Ｃorrect horse 42", params=FAST)  # fullwidth C
    assert passwords.verify_password("Correct horse 42", h, params=FAST)[0]


def test_malformed_stored_hash_is_a_failed_verification() -> None:
    assert passwords.verify_password("whatever", "not-a-hash", params=FAST) == (False, False)


def test_dummy_verify_uses_the_same_cost_as_real_hashes() -> None:
    passwords.dummy_verify("guess", params=FAST)  # never raises
    assert passwords._dummy_hash(FAST).startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert passwords._dummy_hash(passwords.DEFAULT_PARAMS).startswith(
        "$argon2id$v=19$m=65536,t=3,p=4$")


@pytest.mark.parametrize("pw", ["correct horse battery", "Tr0ub4dor&3xyz", "zebra-Lamp-7-moon"])
def test_password_policy_accepts_reasonable_passwords(pw: str) -> None:
    passwords.check_password_policy(pw, user_name="alice")


@pytest.mark.parametrize("pw, reason", [
    ("Short1!", "at least 12"),
    ("alllowercaseletters", "mix at least 2"),
    ("123456789012", "mix at least 2"),
    ("aaaaaaaaaaa1", "different characters"),
    ("ab12ab12ab12", "different characters"),
    ("my name is Alice!", "user name"),
])
def test_password_policy_refuses_weak_passwords(pw: str, reason: str) -> None:
    with pytest.raises(PasswordPolicy) as exc:
        passwords.check_password_policy(pw, user_name="alice")
    assert any(reason in v for v in exc.value.violations)
    assert exc.value.http_status == 422 and exc.value.code == "password_policy"


# --- TOTP -----------------------------------------------------------------------------------

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC6238_SHA1 = [  # RFC 6238 appendix B, SHA-1 rows
    (59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
    (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"),
]


@pytest.mark.parametrize("t, code", RFC6238_SHA1)
def test_totp_matches_rfc6238_sha1_vectors(t: int, code: str) -> None:
    assert totp.code_at(RFC_SECRET, at_unix(t), digits=8) == code
    step = totp.verify(RFC_SECRET, code, at=at_unix(t), last_used_step=None, digits=8)
    assert step == t // 30


def test_totp_six_digits_is_the_last_six_of_the_eight() -> None:
    assert totp.code_at(RFC_SECRET, at_unix(59)) == "287082"


def test_totp_accepts_one_step_of_drift_and_refuses_two() -> None:
    s = totp.new_secret()
    for offset, accepted in [(-60, False), (-30, True), (0, True), (30, True), (60, False)]:
        code = totp.code_at(s, T0 + timedelta(seconds=offset))
        got = totp.verify(s, code, at=T0, last_used_step=None)
        assert (got is not None) == accepted, offset


def test_totp_refuses_replay_and_older_codes() -> None:
    s = totp.new_secret()
    code = totp.code_at(s, T0)
    step = totp.verify(s, code, at=T0, last_used_step=None)
    assert step == totp.step_at(T0)
    # the same code again, still inside its window
    assert totp.verify(s, code, at=T0 + timedelta(seconds=10), last_used_step=step) is None
    # the previous step's code is within drift but older than the last accepted one
    older = totp.code_at(s, T0 - timedelta(seconds=30))
    assert totp.verify(s, older, at=T0, last_used_step=step) is None
    # the next code is fine
    newer = totp.code_at(s, T0 + timedelta(seconds=30))
    assert totp.verify(s, newer, at=T0 + timedelta(seconds=30), last_used_step=step) == step + 1


def test_totp_credential_accept_records_the_step() -> None:
    cred = totp.TotpCredential(secret=totp.new_secret())
    code = totp.code_at(cred.secret, T0)
    updated = totp.accept(cred, code, at=T0)
    assert updated is not None and updated.confirmed
    assert updated.last_used_step == totp.step_at(T0)
    assert totp.accept(updated, code, at=T0) is None


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "１２３４５６"])
def test_totp_refuses_malformed_codes(bad: str) -> None:
    assert totp.verify(totp.new_secret(), bad, at=T0, last_used_step=None) is None


def test_totp_ignores_spaces_in_code() -> None:
    s = totp.new_secret()
    code = totp.code_at(s, T0)
    assert totp.verify(s, f"{code[:3]} {code[3:]}", at=T0, last_used_step=None) is not None


def test_totp_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        totp.verify(totp.new_secret(), "123456", at=datetime(2030, 1, 1), last_used_step=None)


def test_new_secret_is_160_bit_base32() -> None:
    s = totp.new_secret()
    assert len(base64.b32decode(s + "=" * (-len(s) % 8))) == 20
    assert s != totp.new_secret()


def test_provisioning_uri_and_qr() -> None:
    uri = totp.provisioning_uri(RFC_SECRET, "alice@example.org")
    assert uri.startswith("otpauth://totp/facesearch:alice@example.org?")
    for part in (f"secret={RFC_SECRET}", "issuer=facesearch", "algorithm=SHA1", "digits=6",
                 "period=30"):
        assert part in uri
    assert totp.provisioning_uri(RFC_SECRET, "a b", issuer="Agency X").startswith(
        "otpauth://totp/Agency%20X:a%20b?")
    with pytest.raises(ValueError):
        totp.provisioning_uri(RFC_SECRET, "a:b")
    assert totp.qr_png(uri).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in totp.qr_svg(uri)


# --- lockout --------------------------------------------------------------------------------

def test_lockout_after_five_failures_and_release_after_fifteen_minutes() -> None:
    clock = FakeClock()
    policy = lockout.LockoutPolicy()
    state = lockout.LockoutState.for_user("alice")
    for _ in range(4):
        policy.check(state, clock())
        state = policy.register_failure(state, clock())
        clock.advance(10)
    assert not policy.is_locked(state, clock())
    state = policy.register_failure(state, clock())  # fifth
    with pytest.raises(AccountLocked) as exc:
        policy.check(state, clock())
    assert exc.value.retry_after_s == 15 * 60 and exc.value.http_status == 429
    clock.advance(15 * 60 - 1)
    with pytest.raises(AccountLocked) as exc:
        policy.check(state, clock())
    assert exc.value.retry_after_s == 1
    clock.advance(1)
    policy.check(state, clock())  # released
    # after the release one failure does not lock again
    state = policy.register_failure(state, clock())
    assert state.failures == 1 and not policy.is_locked(state, clock())


def test_attempts_during_a_lock_do_not_extend_it() -> None:
    clock = FakeClock()
    policy = lockout.LockoutPolicy()
    state = lockout.LockoutState.for_user("alice")
    for _ in range(5):
        state = policy.register_failure(state, clock())
    until = state.locked_until
    clock.advance(60)
    assert policy.register_failure(state, clock()) == state
    assert state.locked_until == until


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = FakeClock()
    policy = lockout.LockoutPolicy()
    state = lockout.LockoutState.for_user("alice")
    for _ in range(4):
        state = policy.register_failure(state, clock())
    clock.advance(15 * 60)
    state = policy.register_failure(state, clock())
    assert state.failures == 1 and not policy.is_locked(state, clock())


def test_success_clears_the_counter() -> None:
    policy = lockout.LockoutPolicy()
    state = lockout.LockoutState.for_user("alice")
    for _ in range(4):
        state = policy.register_failure(state, T0)
    state = policy.register_success(state, T0)
    state = policy.register_failure(state, T0)
    assert state.failures == 1 and not policy.is_locked(state, T0)


def test_case_and_whitespace_variants_share_one_lockout() -> None:
    variants = ["Alice", " alice", "ALICE ", "\talice\n", "ａｌｉｃｅ", "al\u200bice", "aLiCe"]
    keys = {lockout.normalise_user_name(v) for v in variants}
    assert keys == {"alice"}
    assert lockout.normalise_user_name("Straße") == lockout.normalise_user_name("STRASSE")
    assert lockout.normalise_user_name(" john   smith ") == "john smith"
    # five failures spread over the variants lock every variant
    policy = lockout.LockoutPolicy()
    states: dict[str, lockout.LockoutState] = {}
    for v in variants[:5]:
        key = lockout.normalise_user_name(v)
        states[key] = policy.register_failure(states.get(key, lockout.LockoutState(key)), T0)
    for v in variants:
        with pytest.raises(AccountLocked):
            policy.check(states[lockout.normalise_user_name(v)], T0)


# --- tokens and sessions --------------------------------------------------------------------

def test_stored_token_hash_is_sha256_and_never_the_token() -> None:
    token, rec = tokens.issue("u1", 600, T0)
    assert rec.token_hash != token and token not in rec.token_hash
    assert len(rec.token_hash) == 64 and rec.token_hash == tokens.hash_token(token)
    assert len(token) >= 43  # 32 random bytes, base64url
    assert token not in repr(rec)


def test_api_token_valid_until_expiry() -> None:
    clock = FakeClock()
    token, rec = tokens.issue("u1", 600, clock())
    assert tokens.check(token, rec, clock.advance(599)) == rec
    with pytest.raises(TokenExpired) as exc:
        tokens.check(token, rec, clock.advance(1))
    assert exc.value.http_status == 401


def test_wrong_or_unknown_token_is_refused() -> None:
    token, rec = tokens.issue("u1", 600, T0)
    other, _ = tokens.issue("u1", 600, T0)
    with pytest.raises(TokenInvalid):
        tokens.check(other, rec, T0)
    with pytest.raises(TokenInvalid):
        tokens.check(token, None, T0)


def test_revoked_token_is_refused() -> None:
    token, rec = tokens.issue("u1", 600, T0)
    revoked = tokens.revoke(rec, T0 + timedelta(seconds=5))
    assert revoked.revoked and not rec.revoked
    with pytest.raises(TokenInvalid):
        tokens.check(token, revoked, T0 + timedelta(seconds=6))
    assert tokens.revoke(revoked, T0 + timedelta(seconds=9)).revoked_at == revoked.revoked_at


@pytest.mark.parametrize("ttl", [0, -1, 24 * 3600 + 1])
def test_token_ttl_must_be_short_and_positive(ttl: int) -> None:
    with pytest.raises(ValueError):
        tokens.issue("u1", ttl, T0)


def test_session_idle_timeout_and_touch() -> None:
    clock = FakeClock()
    token, rec = tokens.start_session("u1", clock())
    clock.advance(29 * 60)
    rec = tokens.use_session(token, rec, clock())  # touched
    assert rec.last_seen_at == clock()
    clock.advance(29 * 60)
    rec = tokens.use_session(token, rec, clock())  # still alive thanks to the touch
    clock.advance(30 * 60)
    with pytest.raises(SessionExpired):
        tokens.check_session(token, rec, clock())


def test_session_absolute_lifetime_wins_over_activity() -> None:
    clock = FakeClock()
    policy = tokens.SessionPolicy(idle_timeout_s=30 * 60, absolute_lifetime_s=3600)
    token, rec = tokens.start_session("u1", clock(), policy)
    for _ in range(3):
        clock.advance(20 * 60 - 1)
        rec = tokens.use_session(token, rec, clock(), policy)
    clock.advance(3)  # 60 min + 0 s after the start
    with pytest.raises(SessionExpired):
        tokens.use_session(token, rec, clock(), policy)


def test_logout_revokes_the_session() -> None:
    token, rec = tokens.start_session("u1", T0)
    rec = tokens.revoke(rec, T0 + timedelta(minutes=1))
    with pytest.raises(TokenInvalid):
        tokens.use_session(token, rec, T0 + timedelta(minutes=2))


def test_touch_never_moves_backwards() -> None:
    _, rec = tokens.start_session("u1", T0)
    assert tokens.touch(rec, T0 - timedelta(minutes=5)).last_seen_at == T0


# --- errors ---------------------------------------------------------------------------------

def test_auth_errors_share_one_generic_login_message() -> None:
    e = AuthenticationFailed()
    assert e.http_status == 401 and e.code == "authentication_failed"
    assert "password" in str(e) and "one-time code" in str(e)
    assert isinstance(TokenExpired(), AuthenticationFailed)
    assert isinstance(AccountLocked(5), FaceSearchError)
