"""A short reload storm (tests/lib/storm.py, the same as ./bench --only storm):
renewals (dovecot and postfix reloaded), accounts edits and `systemctl reload
postmaster` while mail flows in on 25 and 587 and users log in over IMAPS. Nothing
accepted may be lost or doubled, no SMTP session may fail, and nothing may be
deferred.

Deliveries: a dovecot reload unlinks and recreates every unix listener
(src/master/service-listen.c, listener_equals(): "always unlink and recreate
unix/fifo listeners"), LMTP's private/dovecot-lmtp included. An LMTP connection
postfix had opened to the old socket that no lmtp process accepted yet died with it:
postfix logged "lost connection ... while receiving the initial server greeting" and
deferred the mail (0 to 2 in a 60 s storm). postfix now delivers to
private/postmaster-lmtp, a socket systemd holds, and `postmaster lmtp-relay` behind
it tries again until dovecot greets (units/postmaster-lmtp.*): no deferral at all.
With postfix delivering to dovecot's socket directly, the deferrals come back, and
test_lmtp_relay.py's delivery while dovecot is down fails at once.

A reload also replaces dovecot's auth process: an lmtp user lookup queued on the old
one is cut ("auth-master: userdb lookup(...): Disconnected unexpectedly") and lmtp
answers that RCPT "451 4.3.0 <...> Temporary internal error" (twice in 33 reloads
with a dovecot reload every 3 to 4 s, never in this storm's shape). postfix deferred
the recipient; the relay now sends such a RCPT again (at most 3 times within a
second, supervisor/src/lmtp_relay/dialogue.rs) and postfix sees only the last reply:
no deferral may be left of it either.

What a dovecot reload still cuts, from dovecot's design, no setting changes it:

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
    # Not one deferral: the LMTP relay waits out the replacement of dovecot's socket,
    # so no greeting is lost, and sends a RCPT whose user lookup a reload cut again
    # (see above), so none is deferred for that either.
    assert r["deferred"] == 0, report
    # Each RCPT sent again was for dovecot's internal error, never more often than
    # 3 times each (a saved one is 1 to 3 of them, one whose tries ran out 3 and a
    # deferral, which the line above forbids).
    assert r["rcpt_saved"] <= r["rcpt_resent"] <= 3 * r["rcpt_saved"], report
    # The relay followed every delivery's dialogue to its end (it stops following
    # only what it does not understand, and then cannot send a RCPT again).
    assert r["relay_unfollowed"] == 0, report
    # And that was the relay's doing: every delivery went through it (a storm can
    # pass without deferrals by luck; postfix's log says which socket it used).
    assert r["around_relay"] == 0 and r["via_relay"] >= r["accepted"], report
    login_errors = [e for e in r["errors"] if e.startswith("imaps login")]
    assert all(CUT_BY_A_RELOAD in e for e in login_errors), report
    # At most the one login in flight at each dovecot reload (see above).
    assert r["failed_logins"] <= r["dovecot_reloads"], report
