"""Password guessing is refused: after repeated failed logins from one address, its
logins (IMAP, POP3, SMTP AUTH alike) are refused for a while, while other addresses
log in as before; `postmaster status` lists the block; `postmaster unblock` lifts it.

The guesser is the outside host (mx.example.com, tests/lib/world.py), at another
address than this test host. The limits are lowered for this module (config.toml
+ `systemctl reload postmaster`): the other scenarios log in wrongly on purpose
from the test host, so the bed's own configuration keeps them high.
"""

from __future__ import annotations

import json
import poplib
import time

import pytest

import mailclient as mc

CONFIG = "/etc/postmaster/config.toml"
# mailhost.CONFIG's [logins] has block_after_failures = 1000 for the other scenarios.
BED_LIMIT = "block_after_failures = 1000"
LIMITS = "block_after_failures = 3\nfailure_window_seconds = 600\nblock_seconds = 600"

# Runs on the outside host: one login per line of argv[2:] ("proto user password"),
# prints one JSON result per attempt: "ok" or the error text.
GUESSER = r"""
import imaplib, json, poplib, smtplib, ssl, sys
host = sys.argv[1]
ctx = ssl._create_unverified_context()  # the bed's test CA is not the outside host's business
out = []
for spec in sys.argv[2:]:
    proto, user, password = spec.split(" ", 2)
    try:
        if proto == "imap":
            c = imaplib.IMAP4_SSL(host, 993, ssl_context=ctx, timeout=60); c.login(user, password); c.logout()
        elif proto == "pop3":
            c = poplib.POP3_SSL(host, 995, context=ctx, timeout=60); c.user(user); c.pass_(password); c.quit()
        else:
            c = smtplib.SMTP(host, 587, timeout=60); c.starttls(context=ctx); c.login(user, password); c.quit()
        out.append("ok")
    except Exception as e:
        out.append(f"{type(e).__name__}: {e}")
print(json.dumps(out))
"""


def outside_logins(world, host, *attempts: tuple[str, str, str]) -> list[str]:
    res = world.bed.run(["python3", "-c", GUESSER, host.ip, *(" ".join(a) for a in attempts)], timeout=300)
    assert res.returncode == 0, res
    return json.loads(res.stdout)


def status(host) -> dict:
    # Its exit code says whether the host is healthy (DKIM records may be missing
    # here); the JSON is printed either way.
    return json.loads(host.bed.run(["postmaster", "status", "--json"]).stdout)


@pytest.fixture(scope="module")
def low_limits(host, world):
    original = host.bed.path(CONFIG).read_text()
    assert BED_LIMIT in original, original
    try:
        host.bed.path(CONFIG).write_text(original.replace(BED_LIMIT, LIMITS))
        host.bed.run(["systemctl", "reload", "postmaster.service"], check=True)
        assert status(host)["logins"]["block_after_failures"] == 3
        yield
    finally:
        # The other scenarios' limits, and nobody left blocked, whatever happened.
        host.bed.path(CONFIG).write_text(original)
        host.bed.run(["systemctl", "reload", "postmaster.service"], check=True)
        for address in (world.ip, "10.231.1.1"):
            host.bed.run(["postmaster", "unblock", address])


def test_guessing_blocks_that_address_on_every_protocol_and_unblock_lifts_it(host, world, server, thomas, low_limits):
    user, password = thomas
    outside = world.ip
    assert outside != "10.231.1.1" and outside != host.ip
    # Before: the outside host logs in.
    assert outside_logins(world, host, ("imap", user, password)) == ["ok"]

    # Three wrong passwords, over IMAP, POP3 and SMTP AUTH: each counts.
    started = time.monotonic()
    guesses = outside_logins(world, host, ("imap", user, "guess-1"), ("pop3", user, "guess-2"), ("smtp", user, "guess-3"))
    assert all(g != "ok" for g in guesses), guesses

    # Now even the right password is refused from there, on every protocol...
    refused = outside_logins(world, host, ("imap", user, password), ("pop3", user, password), ("smtp", user, password))
    assert all(r != "ok" for r in refused), refused
    # ...while this host (another address) logs in everywhere.
    mc.imap_login(server, user, password).logout()
    with mc.smtp(server, 587, "starttls") as s:
        s.login(user, password)
    p = poplib.POP3_SSL(server.address, 995, context=mc.tls_context(server), timeout=30)
    p.user(user)
    p.pass_(password)
    p.quit()

    # The block is in the status, with the address and the failures counted.
    blocked = status(host)["logins"]["blocked"]
    assert [b["address"] for b in blocked] == [outside], blocked
    assert blocked[0]["failures"] == 3 and blocked[0]["until"] > time.time() + 500, blocked
    text = host.bed.run(["postmaster", "status"]).stdout
    assert f"{outside} blocked until" in text and f"postmaster unblock {outside}" in text, text
    journal = host.bed.journal("dovecot.service")
    assert "policy" in journal.lower(), journal[-3000:]

    # Lifting it: the outside host logs in again at once.
    out = host.bed.run(["postmaster", "unblock", outside])
    assert out.returncode == 0 and f"{outside} may log in again" in out.stdout, out
    assert status(host)["logins"]["blocked"] == []
    assert outside_logins(world, host, ("imap", user, password), ("smtp", user, password)) == ["ok", "ok"]
    # Unblocking what is not blocked says so.
    out = host.bed.run(["postmaster", "unblock", outside])
    assert out.returncode == 1 and "is not blocked" in out.stdout, out
    out = host.bed.run(["postmaster", "unblock", "not-an-address"])
    assert out.returncode == 1 and "is not an IP address" in out.stderr, out
    print(f"blocked after 3 failures in {time.monotonic() - started:.1f} s")


def test_after_unblock_an_address_starts_from_nothing(host, world, thomas, low_limits):
    """Attempts refused while blocked are not counted, and unblock forgets the
    failures: one more wrong password afterwards does not block it again."""
    user, password = thomas
    guesses = outside_logins(world, host, *[("imap", user, f"guess-{i}") for i in range(5)])
    assert all(g != "ok" for g in guesses), guesses
    assert [b["address"] for b in status(host)["logins"]["blocked"]] == [world.ip]
    assert host.bed.run(["postmaster", "unblock", world.ip]).returncode == 0
    wrong, right = outside_logins(world, host, ("imap", user, "one-more-wrong"), ("imap", user, password))
    assert wrong != "ok" and right == "ok", (wrong, right)
    assert status(host)["logins"]["blocked"] == []


# Runs on the mail host: reports `failures` failed logins of argv[1] to the policy
# listener, as dovecot's auth does; prints "answered" or the error.
FAKE_REPORTS = r"""
import json, sys, urllib.request
body = json.dumps({"remote": sys.argv[1], "protocol": "imap", "success": False, "policy_reject": False}).encode()
try:
    for _ in range(int(sys.argv[2])):
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:10041/?command=report", data=body), timeout=10).read()
    print("answered")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
"""


def test_only_dovecots_auth_may_report_failures(host, low_limits):
    """Anyone on the host can reach the loopback listener: a user that is not
    dovecot's auth (here `nobody`) must not be able to block an address by
    reporting failures for it. root, sending the same reports, does block it:
    the requests themselves are what dovecot sends."""
    victim = "192.0.2.99"
    as_nobody = host.bed.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "python3", "-c", FAKE_REPORTS, victim, "5"])
    assert as_nobody.returncode == 0 and as_nobody.stdout.strip() != "answered", as_nobody
    assert victim not in [b["address"] for b in status(host)["logins"]["blocked"]]
    assert "not made by dovecot's auth" in host.bed.journal("postmaster.service")
    try:
        as_root = host.bed.run(["python3", "-c", FAKE_REPORTS, victim, "3"])
        assert as_root.stdout.strip() == "answered", as_root
        assert victim in [b["address"] for b in status(host)["logins"]["blocked"]]
    finally:
        host.bed.run(["postmaster", "unblock", victim])
