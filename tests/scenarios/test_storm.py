"""A short reload storm (tests/lib/storm.py, the same as ./bench --only storm):
renewals (dovecot and postfix reloaded), accounts edits and `systemctl reload
postmaster` while mail flows in on 25 and 587 and users log in over IMAPS. Nothing
accepted may be lost, doubled or deferred, and no SMTP session may fail.

IMAPS logins: a dovecot reload restarts all its processes, auth included, and a
login in flight can be cut; the client sees its LOGIN answered by a closed
connection. Two ways, seen in the journal: the old auth process checked the
password, the new imap process's lookup reaches the new one, and dovecot aborts
("auth-master: login: Auth server restarted (pid A -> B), aborting auth",
src/lib-login/login-server-auth.c); or imap-login's hand-off to imap is closed
unanswered ("master(imap): read() failed: Remote closed connection"). No setting
found changes that, so such a login is tolerated here, at most one per reload; any
other failure (refused, TLS, a wrong answer) is not.

Deliveries: at the same instant of a reload, an LMTP connection from postfix is
now and then closed before dovecot's greeting (postfix: "lost connection ... while
receiving the initial server greeting", deferred); its cause is not found yet, and
this test fails when it happens, as it should."""

from __future__ import annotations

import storm

STORM_SECONDS = 25
CUT_BY_A_RELOAD = "LOGIN => socket error: EOF"


def test_a_reload_storm_loses_doubles_and_defers_no_mail(host, world):
    r = storm.run(host, seconds=STORM_SECONDS)
    report = "\n".join(f"  {k}: {v}" for k, v in r.items())
    # The storm must have been one: mail flowed and every few seconds something
    # was reloaded or edited (a reload or edit that failed is listed under errors).
    assert r["failed_disturbances"] == 0, report
    assert r["disturbances"] >= 4, report
    assert r["dovecot_reloads"] >= 2, report
    assert r["accepted"] >= 100, report
    assert r["logins"] >= 20, report
    noticed = {k: r[k] for k in ("lost", "duplicated", "deferred", "failed_sessions")}
    assert noticed == dict.fromkeys(noticed, 0), report
    assert not r["still_queued"], report
    login_errors = [e for e in r["errors"] if e.startswith("imaps login")]
    assert all(CUT_BY_A_RELOAD in e for e in login_errors), report
    # At most the one login in flight (the storm has one login client) at each
    # dovecot reload.
    assert r["failed_logins"] <= r["dovecot_reloads"], report
