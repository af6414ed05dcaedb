"""The supervisor daemon (postmaster.service) keeping the mail host in step, seen
from outside: accounts edits and certificate replacements take effect with postfix
and dovecot never restarted, and bad input never reaches them.

Runs after test_mail_flow.py on the same host; every test leaves the accounts file
and the certificate as valid as it found them.
"""

from __future__ import annotations

import imaplib
import json
import threading
import time


import mailclient as mc
import mailhost

LIVE = "/etc/letsencrypt/live/mail.example.org"
ARCHIVE = "/etc/letsencrypt/archive/mail.example.org"
ACCOUNTS = "/etc/postmaster/accounts.toml"
CERT_PORTS = [25, 465, 587, 993, 995]
# What postfix logs when reloaded, and when an smtpd sees a table replaced.
POSTFIX_RELOADED = "]: reload -- version"
SMTPD_STARTS_OVER = "sender_login(0,lock|fold_fix|utf8_request) has changed -- restarting"


def status(host) -> dict:
    out = host.bed.run(["postmaster", "status", "--json"])
    assert out.stdout.strip(), f"no status: {out.stderr}"
    return json.loads(out.stdout)


def main_pids(host) -> dict:
    return {u: host.bed.main_pid(u) for u in ("postfix.service", "dovecot.service")}


def write_in_bed(host, path: str, text: str) -> None:
    host.bed.run(["sh", "-c", f"cat > {path}.edit && mv {path}.edit {path}"], input=text, check=True)


def wait_status(host, what, predicate, timeout=20.0) -> dict:
    return mc.wait_for(what, lambda: (lambda s: s if predicate(s) else None)(status(host)), timeout)


def test_daemon_is_ready_and_healthy(host):
    assert host.bed.is_active("postmaster.service"), host.bed.journal("postmaster.service", lines=40)
    s = wait_status(host, "a healthy status", lambda s: s["accounts"]["applied"] is not None)
    assert s["accounts"]["errors"] == [] and s["certificate"]["error"] is None, s
    assert s["accounts"]["mailboxes"] == 3
    show = host.bed.systemctl("show", "-p", "StatusText", "-p", "User", "postmaster.service")
    assert "StatusText=serving 3 mailboxes for example.org, example.net" in show, show
    assert "User=postmaster" in show, show


def test_adding_a_mailbox_by_editing_the_file(host, server):
    before = main_pids(host)
    reloads_before = status(host)["last_reload"]
    accounts = host.accounts + '\n[mailboxes.dora]\npassword = "' + mailhost.hash_password("dora-secret-4") + '"\n'
    write_in_bed(host, ACCOUNTS, accounts)
    # The new login works over IMAPS: polled without failed logins, which dovecot
    # would penalise; the status says when it was applied.
    wait_status(host, "4 mailboxes applied", lambda s: s["accounts"]["mailboxes"] == 4)
    m = mc.wait_for("dora's first login", lambda: _try_login(server, "dora", "dora-secret-4"), timeout=10)
    m.logout()
    subject = mc.unique_subject("welcome dora")
    assert mc.send_inbound(server, "someone@elsewhere.example", ["dora@example.net"], subject) == {}
    mc.imap_find(server, "dora", "dora-secret-4", subject)
    assert main_pids(host) == before, "postfix or dovecot was restarted"
    # lmdb maps and the passwd-file are re-read by postfix and dovecot on their
    # own: an accounts change reloads nothing.
    assert status(host)["last_reload"] == reloads_before
    host.accounts = accounts


def test_a_same_second_same_size_rewrite_is_not_missed(host, server):
    # Two passwords whose hashes have the same length: the second rewrite keeps the
    # file's size and lands in the same second as the first. dovecot notices a
    # passwd-file change by mtime and size, so the daemon must make it visible.
    first, second = mailhost.hash_password("dora-first-5"), mailhost.hash_password("dora-second-6")
    assert len(first) == len(second)
    old = host.accounts.split("[mailboxes.dora]")[1].split('"')[1]
    write_in_bed(host, ACCOUNTS, host.accounts.replace(old, first))
    m = mc.wait_for("the first password to work", lambda: _try_login(server, "dora", "dora-first-5"), timeout=10)
    m.logout()
    # dovecot has just read the file with the first hash; rewrite it at once, within
    # (most likely) the same second, with the same size.
    write_in_bed(host, ACCOUNTS, host.accounts.replace(old, second))
    m = mc.wait_for("the second password to work", lambda: _try_login(server, "dora", "dora-second-6"), timeout=10)
    m.logout()
    host.accounts = host.accounts.replace(old, second)


def _try_login(server, user, password):
    try:
        return mc.imap_login(server, user, password)
    except imaplib.IMAP4.error:
        time.sleep(1.1)  # dovecot looks at the passwd-file at most once a second
        return None


def test_a_broken_file_keeps_the_last_good_state(host, server, thomas):
    good = host.accounts
    broken = good + '\n[mailboxes.eve]\npasword = "oops"\n'
    write_in_bed(host, ACCOUNTS, broken)
    s = wait_status(host, "the error in status", lambda s: s["accounts"]["errors"])
    line = broken.count("\n", 0, broken.index("pasword")) + 1
    assert any(e.startswith(f"{ACCOUNTS}:{line}:1: unknown key `pasword`") for e in s["accounts"]["errors"]), s
    out = host.bed.run(["postmaster", "status"])
    assert out.returncode == 1 and f"{ACCOUNTS}:{line}:1:" in out.stdout, out
    out = host.bed.run(["postmaster", "reload"])
    assert out.returncode == 1 and f"{ACCOUNTS}:{line}:1: unknown key `pasword`" in out.stderr, out
    # Everything served before still works.
    mc.imap_login(server, *thomas).logout()
    subject = mc.unique_subject("while broken")
    assert mc.send_inbound(server, "someone@elsewhere.example", ["dora@example.org"], subject) == {}
    mc.imap_find(server, "dora", "dora-second-6", subject)
    # Fixed: applied, status clean.
    write_in_bed(host, ACCOUNTS, good)
    wait_status(host, "errors cleared", lambda s: not s["accounts"]["errors"])
    assert host.bed.run(["postmaster", "status"]).returncode == 0
    out = host.bed.run(["postmaster", "reload"])
    assert out.returncode == 0 and out.stdout.startswith("serving 4 mailboxes"), out


def test_systemctl_reload_rereads_everything_in_place(host):
    pid = host.bed.main_pid("postmaster.service")
    host.bed.systemctl("reload", "postmaster.service")  # notify-reload: SIGHUP, RELOADING=1 … READY=1
    assert host.bed.main_pid("postmaster.service") == pid
    assert host.bed.is_active("postmaster.service")
    assert "reloaded on SIGHUP" in host.bed.journal("postmaster.service", lines=20)


def _served(host, server) -> dict:
    return {p: mc.served_fingerprint(server, p) for p in CERT_PORTS}


def _new_pair(host, stem):
    chain, key = host.ca.issue(host.dir / "renewals", [mailhost.HOST_NAME], stem=stem)
    import hashlib, ssl
    der = ssl.PEM_cert_to_DER_cert(chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    return chain.read_text(), key.read_text(), hashlib.sha256(der).hexdigest()


def test_certbot_style_symlink_swap_is_served_everywhere(host, server):
    before = main_pids(host)
    chain, key, fingerprint = _new_pair(host, "renewal2")
    b = host.bed
    journal = b.journal()
    postfix_reloads, smtpd_restarts = journal.count(POSTFIX_RELOADED), journal.count(SMTPD_STARTS_OVER)
    b.run(["sh", "-c", f"cat > {ARCHIVE}/fullchain2.pem"], input=chain, check=True)
    b.run(["sh", "-c", f"umask 027; cat > {ARCHIVE}/privkey2.pem && chgrp postmaster {ARCHIVE}/privkey2.pem"], input=key, check=True)
    # certbot replaces each live/ symlink with a rename of a new one.
    for name in ("privkey", "fullchain"):
        b.run(["sh", "-c", f"ln -s ../../archive/mail.example.org/{name}2.pem {LIVE}/.{name}.new && mv -T {LIVE}/.{name}.new {LIVE}/{name}.pem"], check=True)
    mc.wait_for("the new certificate on every port", lambda: set(_served(host, server).values()) == {fingerprint}, timeout=20)
    s = wait_status(host, "the install verified", lambda s: s["certificate"]["fingerprint"] == fingerprint and s["certificate"]["verified"])
    assert s["certificate"]["verified"]["ok"], s
    assert main_pids(host) == before, "postfix or dovecot was restarted"
    # postfix took the new certificate without a reload: its smtpd processes
    # started over because the table they had open was replaced.
    journal = b.journal()
    assert journal.count(POSTFIX_RELOADED) == postfix_reloads, "postfix was reloaded"
    assert journal.count(SMTPD_STARTS_OVER) > smtpd_restarts, "no smtpd started over"
    # The TLS front took it (IMAP, POP3, ManageSieve); dovecot is never reloaded for
    # a certificate.
    assert s["last_reload"]["detail"] == "reloaded postmaster-tls.service", s["last_reload"]


def test_cp_style_two_writes_are_served_everywhere(host, server):
    before = main_pids(host)
    chain, key, fingerprint = _new_pair(host, "renewal3")
    # cp writes through the symlinks into the archive files, one file after the other.
    host.bed.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=chain, check=True)
    time.sleep(0.5)
    host.bed.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=key, check=True)
    mc.wait_for("the new certificate on every port", lambda: set(_served(host, server).values()) == {fingerprint}, timeout=20)
    assert main_pids(host) == before, "postfix or dovecot was restarted"


def test_a_key_that_does_not_match_changes_nothing(host, server):
    served = _served(host, server)
    chain, _, fingerprint = _new_pair(host, "mismatch-a")
    _, other_key, _ = _new_pair(host, "mismatch-b")
    host.bed.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=chain, check=True)
    host.bed.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=other_key, check=True)
    s = wait_status(host, "the refusal in status", lambda s: s["certificate"]["error"])
    assert "does not match" in s["certificate"]["error"], s
    time.sleep(3)  # past the settle re-check: still refused, still the old certificate
    assert _served(host, server) == served
    # Reported, re-checked once, then left alone: no complaint every few seconds.
    refusals = lambda: host.bed.journal("postmaster.service").count("certificate pair refused")
    before = refusals()
    time.sleep(5)
    assert refusals() == before
    assert status(host)["certificate"]["fingerprint"] != fingerprint
    # Put a good pair back for the tests after this one.
    good_chain, good_key, good_fp = _new_pair(host, "restore")
    host.bed.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=good_key, check=True)
    host.bed.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=good_chain, check=True)
    mc.wait_for("the good pair served", lambda: set(_served(host, server).values()) == {good_fp}, timeout=20)
    assert status(host)["certificate"]["error"] is None


def test_postfix_is_reloaded_when_its_smtpd_does_not_start_over_by_itself(host, server):
    # An admin's main.cf where smtpd has no table postmaster republishes open: its
    # processes keep the old certificate, and after POSTFIX_GRACE (5 s) the daemon
    # falls back to reloading postfix over D-Bus.
    b = host.bed
    before = main_pids(host)
    original = b.run(["postconf", "-h", "smtpd_sender_login_maps"], check=True).stdout.strip()
    b.run(["sh", "-c", "postconf -e smtpd_sender_login_maps= && postfix reload"], check=True)
    try:
        time.sleep(1)
        _served(host, server)  # idle smtpd processes from after that reload, on every port
        reloads = b.journal().count(POSTFIX_RELOADED)
        chain, key, fingerprint = _new_pair(host, "fallback")
        b.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=chain, check=True)
        b.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=key, check=True)
        s = wait_status(host, "the install verified", lambda s: s["certificate"]["fingerprint"] == fingerprint
                        and s["certificate"]["verified"], timeout=40)
        assert s["certificate"]["verified"]["ok"], s
        assert set(_served(host, server).values()) == {fingerprint}
        journal = b.journal()
        assert "postfix does not serve the new certificate yet; reloading it" in journal
        assert journal.count(POSTFIX_RELOADED) == reloads + 1, "postfix was not reloaded exactly once"
        assert s["last_reload"]["detail"] == "reloaded postfix.service", s["last_reload"]
        assert main_pids(host) == before, "postfix or dovecot was restarted"
    finally:
        b.run(["sh", "-c", f"postconf -e smtpd_sender_login_maps={original} && postfix reload"], check=True)


# Kills the daemon the moment one of its temporary files exists in the generated
# directory, i.e. while it is writing: proof that the kill landed mid-apply.
KILL_MID_APPLY = r"""
for i in $(seq 1 4000); do
  if [ -n "$(find /var/lib/postmaster/generated -name '*.postmaster-tmp*' -print -quit)" ]; then
    systemctl kill -s KILL postmaster.service && echo KILLED_MID_APPLY; exit 0
  fi
  sleep 0.002
done
echo NO_APPLY_SEEN
"""


def _generated_files_are_whole(host, attempt: int) -> None:
    b = host.bed
    # The passwd-file: every line complete (ends in a newline, the fields of a
    # dovecot passwd-file line), every mailbox of the accounts file present.
    users = b.run(["cat", "/var/lib/postmaster/generated/dovecot/users"], check=True).stdout
    assert users.endswith("\n"), f"attempt {attempt}: passwd-file cut short: {users[-80:]!r}"
    entries = [line for line in users.splitlines() if line and not line.startswith("#")]
    logins = [line.split(":")[0] for line in entries]
    # user:password:uid:gid:gecos:home:shell:extra
    assert all(line.count(":") >= 7 for line in entries), f"attempt {attempt}: torn line in {users!r}"
    assert {"thomas", "anna"} <= set(logins), f"attempt {attempt}: {logins}"
    # The alias source is one of the two whole renders, and its table answers.
    source = b.run(["cat", "/var/lib/postmaster/generated/postfix/virtual_alias"], check=True).stdout
    assert source.endswith("\n"), f"attempt {attempt}: alias source cut short: {source[-80:]!r}"
    lists = source.count("list")
    assert lists in (0, 20000), f"attempt {attempt}: alias source has {lists} of 20000 list aliases"
    q = b.run(["postmap", "-q", "thomas@example.org", "lmdb:/var/lib/postmaster/generated/postfix/virtual_alias"])
    assert q.returncode == 0 and "thomas@example.org" in q.stdout, f"attempt {attempt}: {q}"


def test_killing_the_daemon_mid_apply_leaves_no_torn_file(host, server):
    b = host.bed
    # A large accounts file makes each apply take long enough to be interrupted.
    aliases = "".join(f'"list{i}@example.org" = "thomas"\n' for i in range(20000))
    base = host.accounts
    big = base.replace("[aliases]\n", "[aliases]\n" + aliases, 1)
    restarts_before = int(b.systemctl("show", "-p", "NRestarts", "--value", "postmaster.service").strip())
    landed = 0
    for attempt in range(4):
        victim = b.main_pid("postmaster.service")
        assert victim, b.journal("postmaster.service", lines=20)
        killer: dict = {}
        thread = threading.Thread(target=lambda: killer.update(out=b.run(["sh", "-c", KILL_MID_APPLY], timeout=60)))
        thread.start()
        time.sleep(0.1)  # the killer is watching before the edit lands
        write_in_bed(host, ACCOUNTS, big if attempt % 2 == 0 else base)
        thread.join()
        out = killer["out"].stdout
        assert "KILLED_MID_APPLY" in out or "NO_APPLY_SEEN" in out, killer["out"]
        if "KILLED_MID_APPLY" not in out:
            continue
        landed += 1
        host.kills = getattr(host, "kills", 0) + 1
        # `systemctl kill` returns before systemd has reaped the process: until it
        # has, the unit still looks active with the old MainPID.
        mc.wait_for(f"postmaster (pid {victim}) gone",
                    lambda: b.main_pid("postmaster.service") != victim, timeout=30)
        _generated_files_are_whole(host, attempt)
        mc.wait_for("postmaster restarted with a new pid",
                    lambda: b.is_active("postmaster.service")
                    and b.main_pid("postmaster.service") not in (0, victim), timeout=60)
    # The small file's apply may be too quick to catch; the big one's is not.
    assert landed >= 2, f"only {landed} of 4 kills landed during an apply"
    restarts = int(b.systemctl("show", "-p", "NRestarts", "--value", "postmaster.service").strip())
    assert restarts == restarts_before + landed, b.journal("postmaster.service", lines=40)
    write_in_bed(host, ACCOUNTS, big)
    wait_status(host, "the big file applied", lambda s: s["accounts"]["alias_addresses"] >= 20000, timeout=60)
    assert b.run(["postmap", "-q", "list19999@example.org", "lmdb:/var/lib/postmaster/generated/postfix/virtual_alias"]).stdout.strip() == "thomas@example.org"
    leftovers = b.run(["sh", "-c", "find /var/lib/postmaster -name '*.postmaster-tmp*'"]).stdout.strip()
    assert leftovers == "", leftovers
    write_in_bed(host, ACCOUNTS, base)
    wait_status(host, "back to the base file", lambda s: s["accounts"]["alias_addresses"] < 20000, timeout=60)


def test_the_daemon_never_restarted_on_its_own(host):
    # Every restart of the daemon in this session was a test's own kill (counted
    # on the host as they happen); a crash or a watchdog timeout would show as more.
    restarts = int(host.bed.systemctl("show", "-p", "NRestarts", "--value", "postmaster.service").strip())
    assert restarts == getattr(host, "kills", 0), host.bed.journal("postmaster.service", lines=80)


def test_a_refused_call_says_not_allowed_and_is_no_outage(host):
    # The bus refuses callers outside the admin group on purpose: the command says
    # so, with an exit code of its own, instead of "cannot reach the daemon" (3).
    b = host.bed
    stranger, admin = "pm-cli-stranger", "pm-cli-admin"
    for user in (stranger, admin):
        b.run(["sh", "-c", f"id {user} >/dev/null 2>&1 || useradd --system --no-create-home {user}"], check=True)
    b.run(["usermod", "-aG", "postmaster-admin", admin], check=True)

    def as_user(user: str, *argv: str):
        return b.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", "postmaster", *argv])

    for argv in (["status"], ["status", "--json"], ["reload"], ["renew"]):
        res = as_user(stranger, *argv)
        assert res.returncode == 4, res
        assert res.stderr.strip() == "postmaster: not allowed: run as root or as a member of postmaster-admin", res
    # The daemon was there all along: an admin is answered.
    res = as_user(admin, "status", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["accounts"]["errors"] == [], res
