"""The inbound checks' own resolver (issue #13, last bullet of "Inbound checks"):
rspamd asks unbound on the mail host's loopback, never another resolver, so that
DNS blocklists answer it and DNSSEC is validated.

In the bed, unbound asks the outside world's Knot DNS for the bed's zones (a
bed-only drop-in, tests/lib/bed-setup.sh, which also logs every question it is
asked) and answers every other name itself, so nothing leaves the bed.
What is checked here:
- rspamd is configured with 127.0.0.1:53 alone, and unbound listens on loopback only;
- a message from the outside host is checked through unbound: the outside
  domain's SPF and DMARC names are asked of unbound by 127.0.0.1 while the message
  is checked, and the verdict (spf=pass) is in its Authentication-Results;
- with unbound stopped, mail on 25 is deferred (4xx), not accepted unchecked, and
  `postmaster status` says so; once unbound runs again the same message is accepted.
"""

from __future__ import annotations

import json
import re
import time

import pytest

import mailclient as mc

SOMEONE = "someone@example.com"


def rspamd_log(host, lines: int = 30) -> str:
    return host.bed.run(["tail", "-n", str(lines), "/var/log/rspamd/rspamd.log"]).stdout


def unbound_questions(host, since: str) -> list[str]:
    """The questions unbound logged since `since` (journalctl's --since), as
    "CLIENT NAME TYPE" (log-queries: "info: 127.0.0.1 _dmarc.example.com. TXT IN")."""
    out = host.bed.run(["journalctl", "-u", "unbound.service", "--no-pager", "-o", "cat",
                        "--since", since], check=True).stdout
    return [" ".join(m.groups()) for m in re.finditer(r"info: (\S+) (\S+) (\S+) IN$", out, re.M)]


def bed_now(host) -> str:
    return host.bed.run(["date", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()


def wait_running(host, unit: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while host.bed.run(["systemctl", "is-active", "--quiet", unit]).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{unit} not active after {timeout:.0f} s:\n{host.bed.journal(unit, lines=30)}")
        time.sleep(0.2)


@pytest.fixture
def example_com(world):
    """example.com with an SPF record that passes for the outside host, put back after."""
    world.publish("example.com", '@ TXT "v=spf1 mx -all"')
    time.sleep(2.5)  # rspamd's and unbound's caches forget the old record (TTL 1 s)
    yield
    world.unpublish("example.com")


def test_rspamd_asks_unbound_on_loopback_only(host):
    wait_running(host, "unbound.service")
    dump = host.bed.run(["rspamadm", "configdump", "options"], check=True).stdout
    # `nameserver = "…";` or `nameserver [ "…", ]`, as rspamadm prints one or a list.
    found = re.findall(r'nameserver\s*=?\s*(\[[^\]]*\]|"[^"]*")', dump)
    assert found and all(re.findall(r'"([^"]*)"', f) == ["127.0.0.1:53"] for f in found), dump
    # unbound listens on loopback alone (UDP and TCP), nowhere a LAN host could ask it.
    for proto in ("-u", "-t"):
        listening = host.bed.run(["ss", "-H", "-ln", proto, "sport = :53"], check=True).stdout.split("\n")
        addresses = sorted({line.split()[3] for line in listening if line.strip()})
        assert addresses == ["127.0.0.1:53"], (proto, listening)
    # DNSSEC: validation is on (Debian's root trust anchor), the bed's zones insecure.
    modules = host.bed.run(["unbound-checkconf", "-o", "module-config"], check=True).stdout
    assert "validator" in modules, modules
    anchor = host.bed.run(["unbound-checkconf", "-o", "auto-trust-anchor-file"], check=True).stdout
    assert "/var/lib/unbound/root.key" in anchor, anchor


def test_mail_from_outside_is_checked_through_unbound(host, world, server, thomas, example_com):
    wait_running(host, "unbound.service")
    since = bed_now(host)
    time.sleep(1.1)  # journalctl --since has whole seconds
    subject = mc.unique_subject("checked through unbound")
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "Hello from outside.\n")
    assert world.send(SOMEONE, "thomas@example.org", msg) == {"refused": {}}
    got = mc.imap_find(server, *thomas, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    assert "spf=pass" in results and "smtp.mailfrom=someone@example.com" in results, results
    asked = unbound_questions(host, since)
    for question in ("127.0.0.1 example.com. TXT", "127.0.0.1 _dmarc.example.com. TXT"):
        assert question in asked, f"{question} not asked of unbound; it was asked:\n" + "\n".join(asked) \
            + "\n" + rspamd_log(host)


def test_while_unbound_is_stopped_mail_on_25_is_deferred_and_status_says_so(host, world, server, thomas,
                                                                            example_com):
    subject = mc.unique_subject("while unbound is stopped")
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "Retry me.\n")
    host.bed.run(["systemctl", "stop", "unbound.service"], check=True)
    try:
        result = world.send(SOMEONE, "thomas@example.org", msg)
        assert "error" in result, f"accepted while unbound was stopped: {result}\n{rspamd_log(host)}"
        codes = [c for c, _ in result["refused"].values()] if result.get("refused") else [result["error"][0]]
        assert codes and all(400 <= c < 500 for c in codes), f"{result}\n{rspamd_log(host)}"

        status = host.bed.run(["postmaster", "status"])
        assert "postmaster: DEGRADED" in status.stdout, status.stdout
        assert ("unit:       unbound.service inactive (main PID 0)\n"
                "            not running: rspamd cannot look up SPF, DKIM, DMARC or blocklists: "
                "mail arriving on port 25 is deferred (4xx)") in status.stdout, status.stdout
        as_json = json.loads(host.bed.run(["postmaster", "status", "--json"]).stdout)
        assert as_json["inbound"] == {"checker_unit": "rspamd.service", "bayes_unit": "valkey-server.service",
                                      "resolver_unit": "unbound.service"}
    finally:
        host.bed.run(["systemctl", "start", "unbound.service"], check=True)
        wait_running(host, "unbound.service")
    assert "postmaster: healthy" in host.bed.run(["postmaster", "status"]).stdout
    # The sending server retries (every few seconds here, not minutes): accepted
    # and checked once rspamd reaches unbound again.
    deadline = time.monotonic() + 60
    while (result := world.send(SOMEONE, "thomas@example.org", msg)) != {"refused": {}}:
        assert time.monotonic() < deadline, f"still not accepted: {result}\n{rspamd_log(host)}"
        time.sleep(3)
    got = mc.imap_find(server, *thomas, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    assert "spf=pass" in results, results


def test_unbound_memory_at_rest(host):
    """unbound's proportional set size at rest, for the README (printed; bounded)."""
    wait_running(host, "unbound.service")
    pid = host.bed.run(["systemctl", "show", "-P", "MainPID", "unbound.service"], check=True).stdout.strip()
    rollup = host.bed.run(["cat", f"/proc/{pid}/smaps_rollup"], check=True).stdout
    pss_kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    print(f"unbound PSS at rest: {pss_kib / 1024:.1f} MiB (pid {pid})")
    assert 0 < pss_kib < 64 * 1024, rollup
