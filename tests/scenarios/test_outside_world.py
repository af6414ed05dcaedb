"""The bed's outside world (tests/lib/world.py) works: its DNS serves the bed's zones
to the mail host, mail for another domain leaves the mail host by MX lookup and
arrives at mx.example.com, which checks SPF for real, and World.verify's DKIM check
tells a good signature from a bad one.

Each test restores the DNS records it changes.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re

import pytest

import mailclient as mc

SOMEONE = "someone@example.com"


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def submit_to_someone(server, thomas, what: str) -> str:
    """thomas submits on 587 to someone@example.com; returns the subject."""
    subject = mc.unique_subject(what)
    mc.submit(server, 587, *thomas, "thomas@example.org", [SOMEONE], subject)
    return subject


def wait_delivered(world, subject: str) -> bytes:
    return world.wait_message(lambda m: m["Subject"] == subject)


def mail_host_queue_id(raw: bytes) -> str:
    """The mail host's queue id, from the Received header it added."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for received in msg.get_all("Received") or []:
        found = re.search(r"by mail\.example\.org \(Postfix\) with \S+ id (\w+)", " ".join(received.split()))
        if found:
            return found.group(1)
    raise AssertionError(f"no Received header of the mail host in:\n{raw.decode(errors='replace')[:2000]}")


def delivery_log(host, queue_id: str) -> str:
    """The mail host's postfix log lines about one queued message."""
    out = host.bed.run(["journalctl", "--no-pager", "--quiet", "--boot", "--output=cat", f"--grep={queue_id}: to="])
    return out.stdout


# 1. The zones ------------------------------------------------------------------------------

def test_the_mail_host_resolves_with_the_bed_dns(host, world):
    assert host.bed.path("/etc/resolv.conf").read_text().split() == ["nameserver", world.dns_ip]
    # Every answer through the mail host's own resolver configuration.
    def dig(name, rtype):
        return world.dig(name, rtype, bed=host.bed)
    assert dig("example.com", "MX") == ["10 mx.example.com."]
    assert dig("mx.example.com", "A") == [world.ip]
    assert dig("example.org", "MX") == ["10 mail.example.org."]
    assert dig("example.net", "MX") == ["10 mail.example.org."]
    assert dig("mail.example.org", "A") == [host.ip]
    assert dig(reverse_name(host.ip), "PTR") == ["mail.example.org."]
    assert dig(reverse_name(world.ip), "PTR") == ["mx.example.com."]


def test_published_records_are_served_and_unpublish_restores(host, world):
    # A DKIM record as `postmaster dns` prints a 2048-bit key: longer than one TXT
    # string may be (255 bytes), so split into quoted strings, here over two lines.
    p = base64.b64encode(bytes(range(256)) + bytes(38)).decode()
    assert len(p) > 255
    records = (f'mail._domainkey.example.org. 300 IN TXT ( "v=DKIM1; k=rsa; "\n'
               f'\t"p={p[:200]}" "{p[200:]}" )\n'
               'example.org. IN TXT "v=spf1 mx -all"\n'
               '_dmarc.example.org. IN TXT "v=DMARC1; p=none"\n'
               '_submission._tcp.example.org. IN SRV 0 1 587 mail.example.org.\n')
    before = world.serial("example.org")
    session_spf = world.txt("example.org", bed=host.bed)
    try:
        world.publish("example.org", records)
        assert world.serial("example.org") > before
        assert world.txt("mail._domainkey.example.org", bed=host.bed) == [f"v=DKIM1; k=rsa; p={p}"]
        assert world.txt("example.org", bed=host.bed) == ["v=spf1 mx -all"]
        assert world.txt("_dmarc.example.org", bed=host.bed) == ["v=DMARC1; p=none"]
        assert world.dig("_submission._tcp.example.org", "SRV", bed=host.bed) == ["0 1 587 mail.example.org."]
        assert world.dig("example.org", "MX", bed=host.bed) == ["10 mail.example.org."], "base records stay"

        # A second publish replaces the test's records, it does not add to them.
        world.publish("example.org", 'example.org. IN TXT "v=spf1 -all"')
        assert world.txt("example.org", bed=host.bed) == ["v=spf1 -all"]
        assert world.txt("mail._domainkey.example.org", bed=host.bed) == []
    finally:
        world.unpublish("example.org")
    # Back to what the session published (conftest: `postmaster dns`).
    assert world.txt("example.org", bed=host.bed) == session_spf
    assert world.txt("mail._domainkey.example.org", bed=host.bed) == []
    assert world.dig("mail.example.org", "A", bed=host.bed) == [host.ip]


def test_records_knot_cannot_load_are_refused_and_the_old_zone_stays(host, world):
    session_spf = world.txt("example.net", bed=host.bed)
    try:
        world.publish("example.net", 'example.net. IN TXT "v=spf1 mx -all"')
        serial = world.serial("example.net")
        with pytest.raises(ValueError, match="knot refused"):
            world.publish("example.net", 'example.net. IN TXT "unterminated')
        assert world.serial("example.net") == serial
        assert world.txt("example.net", bed=host.bed) == ["v=spf1 mx -all"]
    finally:
        world.unpublish("example.net")
    assert world.txt("example.net", bed=host.bed) == session_spf


# 2. Mail to the outside world ------------------------------------------------------------

def test_mail_to_an_outside_domain_is_delivered_to_its_mx(host, server, world, thomas):
    # No shortcut on the mail host: nothing but DNS tells it where example.com is.
    postconf = host.bed.run(["postconf", "-h", "relayhost", "transport_maps", "default_transport"], check=True)
    assert "example.com" not in postconf.stdout and "10.231" not in postconf.stdout, postconf.stdout

    subject = submit_to_someone(server, thomas, "to the outside world")
    raw = wait_delivered(world, subject)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"] == "thomas@example.org" and msg["To"] == SOMEONE
    qid = mail_host_queue_id(raw)
    log = delivery_log(host, qid)
    assert f"to=<{SOMEONE}>, relay=mx.example.com[{world.ip}]:25" in log and "status=sent" in log, log
    # The outside host saw the mail host under its DNS names (PTR, then A to confirm).
    top = " ".join(msg.get_all("Received")[0].split())
    assert top.startswith(f"from mail.example.org (mail.example.org [{host.ip}])"), top


def test_delivery_follows_the_published_mx(host, server, world, thomas):
    # A preferred MX under a name that exists only in DNS: the mail host must go there.
    try:
        world.publish("example.com", f"example.com. MX 5 mx2.example.com.\nmx2.example.com. A {world.ip}")
        subject = submit_to_someone(server, thomas, "via the published MX")
        raw = wait_delivered(world, subject)
        log = delivery_log(host, mail_host_queue_id(raw))
        assert f"to=<{SOMEONE}>, relay=mx2.example.com[{world.ip}]:25" in log and "status=sent" in log, log
    finally:
        world.unpublish("example.com")


# 3. SPF, checked by the outside host's postfix (policyd-spf) -------------------------------

@pytest.mark.parametrize("record,verdict", [
    ("v=spf1 mx -all", "Pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "Fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "Softfail"),
    (None, "None"),
])
def test_the_outside_host_checks_spf(host, server, world, thomas, record, verdict):
    # The session's records (DKIM, DMARC, ...) with this SPF record instead of its own.
    records = [line for line in world.baseline("example.org").splitlines() if "v=spf1" not in line]
    if record is not None:
        records.append(f'example.org. IN TXT "{record}"')
    try:
        world.publish("example.org", "\n".join(records))
        subject = submit_to_someone(server, thomas, f"spf {verdict}")
        raw = wait_delivered(world, subject)
    finally:
        world.unpublish("example.org")
    result = world.verify(raw)
    header = result["spf_header"]
    assert header is not None and header.split()[0] == verdict, header
    assert "identity=mailfrom;" in header and f"client-ip={host.ip};" in header, header
    assert "envelope-from=thomas@example.org;" in header, header
    assert result["spf"] == verdict.lower() and result["spf_domain"] == "example.org"
    assert result["from_domain"] == "example.org"
    # Signed, so aligned through DKIM whatever SPF says (test_dkim.py covers signing).
    assert result["dkim"] == "pass", result["dkim_signatures"]
    assert result["dmarc_aligned"]


# 4. DKIM, checked by python3-dkim on the outside host (mail host's signing: test_dkim.py)

def test_verify_tells_a_good_dkim_signature_from_a_bad_one(world):
    """The verifier itself, with a message signed on the outside host by python3-dkim
    and a key published in the bed's DNS: pass, then fail once altered or unpublished."""
    bed = world.bed
    key = bed.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], check=True).stdout
    bed.path("/run/test-dkim.key").write_text(key)
    pub = bed.run("openssl pkey -in /run/test-dkim.key -pubout -outform DER | base64 -w0", check=True).stdout.strip()
    value = f"v=DKIM1; k=rsa; p={pub}"
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    message = (b"From: Anna <anna@example.net>\r\nTo: someone@example.com\r\nSubject: signed here\r\n"
               b"Message-ID: <verify-test@example.net>\r\n\r\nA body the signature covers.\r\n")
    bed.path("/run/test-dkim.eml").write_bytes(message)
    # Written to a file, not printed: Bed.run's text output would turn CRLF into LF.
    bed.run(["python3", "-c", "import dkim; m = open('/run/test-dkim.eml', 'rb').read(); "
             "open('/run/test-dkim.signed', 'wb').write(dkim.sign(m, b'sel1', b'example.net', "
             "open('/run/test-dkim.key', 'rb').read()) + m)"], check=True)
    signed = bed.path("/run/test-dkim.signed").read_bytes()
    assert signed.endswith(message) and signed.startswith(b"DKIM-Signature:")
    try:
        world.publish("example.net", f"sel1._domainkey.example.net. 300 IN TXT ( {chunks} )")
        assert world.txt("sel1._domainkey.example.net") == [value]
        good = world.verify(signed)
        assert good["dkim"] == "pass", good
        assert [(s["d"], s["s"], s["result"]) for s in good["dkim_signatures"]] == [("example.net", "sel1", "pass")]
        assert good["from_domain"] == "example.net" and good["dmarc_aligned"] is True
        assert good["spf"] is None, "no Received-SPF: this message never went through postfix"

        altered = world.verify(signed.replace(b"A body", b"A changed body"))
        assert altered["dkim"] == "fail" and altered["dmarc_aligned"] is False, altered
    finally:
        world.unpublish("example.net")
    unpublished = world.verify(signed)
    assert unpublished["dkim"] == "fail", unpublished
    bed.run(["rm", "-f", "/run/test-dkim.key", "/run/test-dkim.eml", "/run/test-dkim.signed"], check=True)


# 5. Mail from the outside world (for the inbound checks, #13) ---------------------------

def test_the_outside_host_sends_to_the_mail_host(host, server, world, anna):
    subject = mc.unique_subject("from the outside world")
    message = mc.make_message(SOMEONE, ["anna@example.net"], subject, "Hello from mx.example.com.\n")
    assert world.send(SOMEONE, "anna@example.net", message) == {"refused": {}}
    got = mc.imap_find(server, *anna, subject)
    # The mail host's postfix knows the sender's server by its DNS names (PTR, then A
    # to confirm); the topmost Received is dovecot's LMTP delivery.
    received = [" ".join(r.split()) for r in got.get_all("Received")]
    assert any(r.startswith(f"from mx.example.com (mx.example.com [{world.ip}]) by mail.example.org")
               for r in received), received

    refused = world.send(SOMEONE, "no-such-person@example.net", message)
    assert refused["error"][0] == 550, refused
