"""A short reload storm (tests/lib/storm.py, the same as ./bench --only storm):
renewals (dovecot and postfix reloaded), accounts edits and `systemctl reload
postmaster` while mail flows in on 25 and 587 and users log in over IMAPS. Nothing
accepted may be lost or doubled, no SMTP session may fail, and nothing may be
deferred but for the one cause below.

What a dovecot reload still cuts, both from dovecot's design, no setting changes it:

Deliveries: a reload unlinks and recreates every unix listener
(src/master/service-listen.c, listener_equals(): "always unlink and recreate
unix/fifo listeners"), LMTP's private/dovecot-lmtp included. An LMTP connection
postfix opened to the old socket that no lmtp process accepted yet dies with it:
postfix logs "lost connection ... while receiving the initial server greeting" and
defers the mail, which its next try delivers (the storm flushes the queue, and
counts it lost if it never arrives). Several can die at one reload (2 at once seen),
at most as many as postfix opens to that socket at once
(lmtp_destination_concurrency_limit). Any other deferral fails the test (dovecot's
"421 4.3.2 Server shutting down" of a reload with shutdown_clients = yes did).

IMAPS logins: a login in flight at a reload can be cut; the client sees its LOGIN
answered by a closed connection. Two ways, seen in the journal: imap-login's hand-off
to imap goes to the login/imap unix socket, replaced as above ("master(imap): read()
failed: Remote closed connection"); or the old auth process checked the password and
the new imap process's lookup reaches the new one, and dovecot aborts ("auth-master:
login: Auth server restarted (pid A -> B), aborting auth",
src/lib-login/login-server-auth.c). The storm has one login client and it waits
0.2 s after a failure, so at most one login per reload; any other failure (refused,
TLS, a wrong answer) fails the test."""

from __future__ import annotations

import storm

STORM_SECONDS = 25
CUT_BY_A_RELOAD = "LOGIN => socket error: EOF"


def test_a_reload_storm_loses_and_doubles_no_mail(host, world):
    r = storm.run(host, seconds=STORM_SECONDS)
    report = "\n".join(f"  {k}: {v}" for k, v in r.items())
    print(report)  # the figures, for `pytest -rP`
    # The storm must have been one: mail flowed and every few seconds something
    # was reloaded or edited (a reload or edit that failed is listed under errors).
    assert r["failed_disturbances"] == 0, report
    assert r["disturbances"] >= 4, report
    assert r["dovecot_reloads"] >= 2, report
    assert r["accepted"] >= 100, report
    assert r["logins"] >= 20, report
    noticed = {k: r[k] for k in ("lost", "duplicated", "failed_sessions")}
    assert noticed == dict.fromkeys(noticed, 0), report
    assert not r["still_queued"], report
    # Deferred only as a reload's replaced LMTP socket defers (see above), and no
    # more at each reload than postfix has connections open to it.
    assert r["deferred"] == r["deferred_at_reload"], report
    lmtp_at_once = int(host.bed.run(["postconf", "-h", "lmtp_destination_concurrency_limit"],
                                    check=True).stdout)
    assert r["deferred_at_reload"] <= lmtp_at_once * r["dovecot_reloads"], report
    login_errors = [e for e in r["errors"] if e.startswith("imaps login")]
    assert all(CUT_BY_A_RELOAD in e for e in login_errors), report
    # At most the one login in flight at each dovecot reload (see above).
    assert r["failed_logins"] <= r["dovecot_reloads"], report
