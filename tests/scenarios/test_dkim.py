"""DKIM signing, SPF and DMARC as the outside world sees them (issue #12).

The mail host signs with rspamd and keys postmaster made; the records come from
`postmaster dns`, published in the bed's DNS the way a user enters them at their
provider (conftest publishes them once for the session). mx.example.com receives
what thomas sends and judges it with programs that are not postmaster's: python3-dkim's
dkimverify and the SPF check of its postfix (tests/lib/world.py).

Each test leaves DNS and the keys as the session had them, or says what it changed.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import time

import pytest

import mailclient as mc
import mailhost

SOMEONE = "someone@example.com"


def status(host) -> dict:
    out = host.bed.run(["postmaster", "status", "--json"])
    assert out.stdout.strip(), out
    return json.loads(out.stdout)


def dkim_keys(host, domain: str) -> list[dict]:
    s = status(host)
    return next(d for d in s["dkim"]["domains"] if d["domain"] == domain)["keys"]


def in_use(host, domain: str) -> dict:
    return next(k for k in dkim_keys(host, domain) if k["in_use"])


def send_out(server, login, sender: str, what: str) -> str:
    subject = mc.unique_subject(what)
    mc.submit(server, 587, *login, sender, [SOMEONE], subject)
    return subject


def signatures(raw: bytes) -> list[dict]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for value in msg.get_all("DKIM-Signature") or []:
        tags = dict(t.strip().split("=", 1) for t in " ".join(value.split()).split(";") if "=" in t)
        out.append({k.strip(): v.replace(" ", "") for k, v in tags.items()})
    return out


def test_mail_to_the_outside_is_signed_and_passes_spf_dkim_and_dmarc(host, world, server, thomas, dns_published):
    selector = in_use(host, "example.org")["selector"]
    subject = send_out(server, thomas, "thomas@example.org", "signed")
    raw = world.wait_message(lambda m: m["Subject"] == subject)
    verdict = world.verify(raw)
    assert verdict["dkim"] == "pass", verdict
    assert [(s["d"], s["s"]) for s in verdict["dkim_signatures"]] == [("example.org", selector)], verdict
    assert verdict["spf"] == "pass" and verdict["spf_domain"] == "example.org", verdict
    assert verdict["dmarc_aligned"], verdict
    # The status agrees: the record of the key in use is in DNS (it asks every second here).
    mc.wait_for("the record present in status", lambda: in_use(host, "example.org")["record"] == "present", 10)


def test_mail_from_the_second_domain_is_signed_for_it(host, world, server, thomas, dns_published):
    # thomas may send as @example.net (his mailbox exists in every hosted domain).
    selector = in_use(host, "example.net")["selector"]
    subject = send_out(server, thomas, "thomas@example.net", "signed for example.net")
    verdict = world.verify(world.wait_message(lambda m: m["Subject"] == subject))
    assert verdict["dkim"] == "pass", verdict
    assert [(s["d"], s["s"]) for s in verdict["dkim_signatures"]] == [("example.net", selector)], verdict
    assert verdict["from_domain"] == "example.net" and verdict["dmarc_aligned"], verdict


def test_a_bounce_the_host_sends_is_signed(host, world, dns_published):
    # A forward to an outside address that does not exist: the mail host accepts,
    # mx.example.com refuses, and the mail host bounces to the outside sender, From
    # MAILER-DAEMON@example.org (myorigin), signed for example.org.
    add = host.bed.run(["postmaster", "alias", "add", "fwd@example.org", "no-such-user@example.com"])
    assert add.returncode == 0, add.stdout + add.stderr
    try:
        subject = mc.unique_subject("bounced forward")
        msg = mc.make_message(SOMEONE, ["fwd@example.org"], subject, "to nobody")
        assert world.send(SOMEONE, "fwd@example.org", msg).get("refused") in (None, {})

        def bounce_back():
            for raw in world.messages():
                flat = b" ".join(raw.split())  # the returned subject may be folded
                if b"<MAILER-DAEMON@example.org>" in raw and subject.encode() in flat:
                    return raw
            return None
        bounce = mc.wait_for("the bounce at someone@example.com", bounce_back, 30)
        verdict = world.verify(bounce)
        assert verdict["dkim"] == "pass", verdict
        assert [s["d"] for s in verdict["dkim_signatures"]] == ["example.org"], verdict
        assert verdict["dmarc_aligned"], verdict
    finally:
        host.bed.run(["postmaster", "alias", "remove", "fwd@example.org"], check=True)


def test_dns_check_says_exactly_what_is_missing_and_is_clean_once_fixed(host, world, dns_published):
    ok = host.bed.run(["postmaster", "dns", "--check"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every required record is right" in ok.stdout, ok.stdout
    # A wrong SPF record and no DMARC record for example.net.
    records = dns_published["example.net"]
    broken = "\n".join(
        line.replace("v=spf1 mx -all", "v=spf1 a ~all")
        for line in records.splitlines()
        if "_dmarc." not in line
    )
    world.publish("example.net", broken)
    try:
        out = host.bed.run(["postmaster", "dns", "--check"])
        assert out.returncode == 1, out.stdout
        lines = out.stdout.splitlines()
        assert "DIFFERENT TXT example.net" in lines, out.stdout
        assert "          found: v=spf1 a ~all" in lines, out.stdout
        assert "MISSING   TXT _dmarc.example.net" in lines, out.stdout
        assert lines[-1] == "2 required records are not right", out.stdout
        as_json = json.loads(host.bed.run(["postmaster", "dns", "--check", "--json"]).stdout)
        bad = {(r["name"], r["verdict"]) for r in as_json if r["verdict"] != "ok"}
        assert bad == {("example.net", "different"), ("_dmarc.example.net", "missing")}, bad
    finally:
        world.unpublish("example.net")
    fixed = host.bed.run(["postmaster", "dns", "--check"])
    assert fixed.returncode == 0, fixed.stdout


def test_rotation_waits_for_dns_then_switches_and_the_old_key_still_verifies(
        host, world, server, thomas, dns_published):
    old = in_use(host, "example.org")["selector"]
    # A message signed with the old key, still on its way when the key changes.
    subject_before = send_out(server, thomas, "thomas@example.org", "before rotation")
    in_flight = world.wait_message(lambda m: m["Subject"] == subject_before)

    out = host.bed.run(["postmaster", "dkim", "rotate", "example.org"])
    assert out.returncode == 0, out.stdout + out.stderr
    keys = dkim_keys(host, "example.org")
    new = next(k for k in keys if not k["in_use"])
    assert new["phase"] == "waiting for its DNS record before it is used", keys
    assert new["selector"] != old
    assert f"publish {new['selector']}._domainkey.example.org. TXT" in out.stdout, out.stdout
    # A second rotation while one waits is refused, naming the record to publish.
    again = host.bed.run(["postmaster", "dkim", "rotate", "example.org"])
    assert again.returncode == 1 and f"{new['selector']}._domainkey.example.org" in again.stderr, again

    # Not published yet: mail is still signed with the old key, for seconds on end
    # (the daemon asks DNS every second in the bed).
    time.sleep(3)
    assert in_use(host, "example.org")["selector"] == old
    subject = send_out(server, thomas, "thomas@example.org", "while the new key waits")
    verdict = world.verify(world.wait_message(lambda m: m["Subject"] == subject))
    assert [s["s"] for s in verdict["dkim_signatures"]] == [old] and verdict["dkim"] == "pass", verdict

    # The user publishes what `postmaster dns` prints now (both selectors).
    zone = mailhost.dns_zones(host)["example.org"]
    assert f"{new['selector']}._domainkey.example.org." in zone and f"{old}._domainkey.example.org." in zone
    publish_what_postmaster_prints(host, world, dns_published)
    mc.wait_for("the switch to the new key", lambda: in_use(host, "example.org")["selector"] == new["selector"], 20)
    keys = {k["selector"]: k for k in dkim_keys(host, "example.org")}
    assert keys[old]["phase"].startswith("replaced; keep published until "), keys
    assert keys[new["selector"]]["record"] == "present", keys
    # rspamd was reloaded to sign with it (nothing else reloads meanwhile).
    assert status(host)["last_reload"]["detail"] == "reloaded rspamd.service", status(host)["last_reload"]

    # rspamd signs with the new key once its reloaded workers run (seconds); until
    # then with the old one, whose record is still there: every message verifies.
    deadline = time.monotonic() + 60
    while True:
        subject = send_out(server, thomas, "thomas@example.org", "after rotation")
        verdict = world.verify(world.wait_message(lambda m: m["Subject"] == subject))
        assert verdict["dkim"] == "pass", verdict
        used = [s["s"] for s in verdict["dkim_signatures"]]
        if used == [new["selector"]]:
            break
        assert used == [old] and time.monotonic() < deadline, verdict
        time.sleep(1)
    # Mail signed with the old key, arriving late, still verifies: its record stays
    # published, and `postmaster dns` keeps listing it until it may go.
    assert world.verify(in_flight)["dkim"] == "pass"
    assert host.bed.run(["postmaster", "dns", "--check"]).returncode == 0


def test_rspamd_stopped_submission_is_refused_for_later_and_nothing_leaves_unsigned(
        host, world, server, thomas, dns_published):
    host.bed.systemctl("stop", "rspamd.service")
    try:
        subject = mc.unique_subject("while rspamd is down")
        # postfix asks the milter at once, and says "later" (4xx) at the first step
        # it cannot pass: the client keeps the message.
        with pytest.raises(smtplib.SMTPException) as refused:
            mc.submit(server, 587, *thomas, "thomas@example.org", [SOMEONE], subject)
        code = getattr(refused.value, "smtp_code", None) or next(
            (c for c, _ in getattr(refused.value, "recipients", {}).values()), None)
        assert code is not None and 400 <= code < 500, repr(refused.value)
        assert "451 4.7.1 Service unavailable - try again later" in host.bed.journal(lines=200)
        mc.wait_for("rspamd reported stopped", lambda: (lambda st: st if any(
            u["name"] == "rspamd.service" and u["active_state"] != "active" for u in st["units"]) else None)(status(host)))
        assert host.bed.run(["postmaster", "status"]).returncode == 1
        time.sleep(2)
        assert not any(subject.encode() in m for m in world.messages()), "unsigned mail left the host"
    finally:
        host.bed.systemctl("start", "rspamd.service")
    mailhost.wait_for_signer(host.bed)
    # The mail program sends it again: now it goes out, signed.
    mc.submit(server, 587, *thomas, "thomas@example.org", [SOMEONE], subject)
    verdict = world.verify(world.wait_message(lambda m: m["Subject"] == subject))
    assert verdict["dkim"] == "pass", verdict
    assert host.bed.run(["postmaster", "status"]).returncode == 0


def signed_with(world, server, thomas, what: str, want: set[str], timeout: float = 60) -> dict:
    """Sends until the message arrives signed with exactly the selectors `want`
    (rspamd's reloaded workers take seconds); every message must verify."""
    deadline = time.monotonic() + timeout
    while True:
        subject = send_out(server, thomas, "thomas@example.org", what)
        verdict = world.verify(world.wait_message(lambda m: m["Subject"] == subject))
        assert all(s["result"] == "pass" for s in verdict["dkim_signatures"]), verdict
        if {s["s"] for s in verdict["dkim_signatures"]} == want:
            return verdict
        assert time.monotonic() < deadline, verdict
        time.sleep(1)


def publish_what_postmaster_prints(host, world, dns_published: dict) -> None:
    for zone, records in mailhost.dns_zones(host).items():
        if zone in world.zones:
            world.set_baseline(zone, records)
            dns_published[zone] = records


def test_ed25519_on_request_adds_a_second_signature(host, world, server, thomas, dns_published):
    config = host.bed.path("/etc/postmaster/config.toml")
    before = config.read_text()
    assert before.rstrip().splitlines()[-1].startswith("dns_check_seconds"), "[dkim] is the last table"
    rsa = in_use(host, "example.org")["selector"]
    try:
        config.write_text(before + "ed25519 = true\n")
        out = host.bed.run(["postmaster", "reload"])
        assert out.returncode == 0, out.stdout + out.stderr
        keys = dkim_keys(host, "example.org")
        ed = [k for k in keys if k["in_use"] and k["selector"] != rsa]
        assert len(ed) == 1, keys
        # Published as `postmaster dns` prints it: k=ed25519 and the raw key.
        publish_what_postmaster_prints(host, world, dns_published)
        zone = dns_published["example.org"]
        assert f'{ed[0]["selector"]}._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; p=' in zone, zone
        verdict = signed_with(world, server, thomas, "with ed25519", {rsa, ed[0]["selector"]})
        assert verdict["dkim"] == "pass" and verdict["dmarc_aligned"], verdict
        assert host.bed.run(["postmaster", "dns", "--check"]).returncode == 0
    finally:
        config.write_text(before)
        host.bed.run(["postmaster", "reload"], check=True)
        publish_what_postmaster_prints(host, world, dns_published)
    # Off again: RSA alone; the Ed25519 record is still listed, to be kept while
    # mail signed with it may be on its way.
    signed_with(world, server, thomas, "ed25519 off again", {rsa})
    retiring = next(k for k in dkim_keys(host, "example.org") if k["selector"] == ed[0]["selector"])
    assert retiring["phase"].startswith("replaced; keep published until "), retiring
    assert host.bed.run(["postmaster", "dns", "--check"]).returncode == 0
