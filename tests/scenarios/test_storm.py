"""A short reload storm (tests/lib/storm.py, the same as ./bench --only storm):
certificate renewals (a new pair written as certbot writes it; the daemon installs
it, reloads the TLS front and makes postfix take it), accounts edits and `systemctl
reload postmaster` while mail flows in on 25 and 587 and users log in over IMAPS.
Nothing accepted may be lost or doubled, no SMTP session may fail, nothing may be
deferred, and no login may fail.

Logins: dovecot is not reloaded at all any more. A renewal used to reload it (it
reads certificates only with its configuration), and each reload replaced its auth
process: a login in flight failed ("auth-master: login: Auth server restarted (pid
A -> B), aborting auth", or imap-login's hand-off to imap lost with the login/imap
socket). TLS for IMAP, POP3 and ManageSieve is now `postmaster tls-front`'s, which
reads a new pair on its own reload and serves it from the next handshake; this storm
demands that every renewal reached every port, that dovecot never reloaded, and
that not one login failed.

Deliveries: the LMTP relay (units/postmaster-lmtp.*) stays: dovecot still reloads
when its configuration changes (an upgrade), and a reload replaces its LMTP socket
and cuts user lookups; the relay waits for the new socket and sends such a RCPT
again. This storm no longer reloads dovecot, so it demands that every delivery went
through the relay and none was deferred; test_lmtp_relay.py provokes both cuts."""

from __future__ import annotations

import storm

STORM_SECONDS = 25


def test_a_reload_storm_loses_and_doubles_no_mail(host, world):
    r = storm.run(host, seconds=STORM_SECONDS)
    report = "\n".join(f"  {k}: {v}" for k, v in r.items())
    print(report)  # the figures, for `pytest -rP`
    # The storm must have been one: mail flowed and every few seconds something
    # was reloaded or edited (a reload or edit that failed is listed under errors).
    assert r["failed_disturbances"] == 0, report
    assert r["disturbances"] >= 4, report
    # Renewals happened and were served on every port, by the front alone.
    assert r["front_reloads"] >= 2 and r["renewals_served"] >= 2, report
    assert r["renewals_not_served"] == 0, report
    assert r["dovecot_reloads"] == 0, report
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
    # Not one login failed (see above).
    assert r["failed_logins"] == 0, report
