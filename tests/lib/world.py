"""The test bed's outside world: a second host, mx.example.com, beside the mail host.

It is the rest of the Internet as far as the mail host can tell:

- the authoritative DNS server (Knot DNS) for example.org, example.net, example.com
  and the bed's reverse zone; the mail host's /etc/resolv.conf points at it;
- a postfix receiving mail for example.com (someone@example.com lands in
  /home/someone/Maildir of that host), which checks SPF at SMTP time with Debian's
  postfix-policyd-spf-python and so adds a real `Received-SPF:` header;
- python3-dkim's `dkimverify`, run on that host so it asks the bed's DNS;
- an SMTP client that sends to the mail host's port 25.

    with World() as world:                       # boots first: DNS must be up
        host = mailhost.prepare(dir)
        mailhost.boot(host, world=world)         # same bridge, resolver = world.dns_ip
        world.publish("example.org", 'example.org. IN TXT "v=spf1 mx -all"')
        ...
        world.wait_message(lambda m: m["Subject"] == subject)

The network: one host bridge (pmbr-NAME, created and deleted by the world's bed) with
the host at NET.1, the mail host at NET.2 and the outside host at NET.3. Every bed on
it reaches the others directly (layer 2); nothing is routed, no IP forwarding.

What is checked by a real program and what is computed here (`verify`):
- DKIM: `dkimverify --index N` (python3-dkim) inside the outside host, once per
  DKIM-Signature, with the key looked up in the bed's DNS. Its verdict is taken as is.
  The d= and s= tags are read from the header here, only to report them.
- SPF: evaluated by policyd-spf (pyspf) in the outside postfix while the message was
  received; this module only reads the verdict from the topmost Received-SPF header.
- DMARC alignment: computed here, nothing looks up a DMARC record. Relaxed alignment
  with "organizational domain" = the last two labels of a name (enough for the bed's
  example.* domains; no public suffix list).

Python 3.11 standard library only.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import email.utils
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bed"))

from bed import Bed, BedError  # noqa: E402

OUTSIDE_HOST = "mx.example.com"
OUTSIDE_DOMAIN = "example.com"
MAIL_HOST = "mail.example.org"
MAIL_DOMAINS = ("example.org", "example.net")
# Low, so that a cache anywhere forgets a record the test replaced within a second.
DEFAULT_TTL = 1
# The outside host must not sign, filter or serve mail: those are the mail host's jobs.
MASKED_UNITS = ("rspamd.service", "dovecot.service")
ZONE_DIR = "/var/lib/knot/bed"


class World:
    """The outside host and its DNS. Use as a context manager, or start()/stop()."""

    def __init__(self, name: str = "pmworld", net: str = "10.231.1", *,
                 outside_id: int = 3, mail_host_id: int = 2):
        """name: the outside host's machine name (also names the bridge pmbr-NAME).
        net: the bed /24 (host .1); mail_host_id / outside_id: the last octets of
        the two hosts. Two worlds at once need two names and two nets."""
        self.name = name
        self.net = net
        self.bridge = f"pmbr-{name}"[:15]
        self.ip = f"{net}.{outside_id}"
        self.dns_ip = self.ip
        self.mail_ip = f"{net}.{mail_host_id}"
        self.mail_host_id = mail_host_id
        self.outside_id = outside_id
        octets = net.split(".")
        self.reverse_zone = ".".join(reversed(octets)) + ".in-addr.arpa"
        self.zones = (*MAIL_DOMAINS, OUTSIDE_DOMAIN, self.reverse_zone)
        self.bed: Bed | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._serial = 1
        self._published: dict[str, str] = {}  # zone -> the test's records
        # zone -> what the session's mail host told its user to publish: what every
        # test starts from and unpublish() returns to (set_baseline).
        self._baseline: dict[str, str] = {}

    # ---- lifecycle --------------------------------------------------------------

    def __enter__(self) -> "World":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "World":
        """Boots the outside host; returns when postfix listens on 25 and every zone
        is served."""
        self._tmp = tempfile.TemporaryDirectory(prefix="postmaster-world-")
        try:
            input_dir = Path(self._tmp.name)
            shutil.copy2(HERE / "world-setup.sh", input_dir / "setup.sh")
            os.chmod(input_dir / "setup.sh", 0o755)
            (input_dir / "knot.conf").write_text(self._knot_conf())
            (input_dir / "zones").mkdir()
            for zone in self.zones:
                (input_dir / "zones" / f"{zone}.zone").write_text(self._zone_text(zone))
            self.bed = Bed(
                bed_input_dir=input_dir, name=self.name, net=self.net, host_id=self.outside_id,
                bridge=self.bridge, own_bridge=True, dns=self.dns_ip, wait_ports=(25, 53),
                init_args=[f"systemd.mask={u}" for u in MASKED_UNITS],
            )
            self.bed.start()
            for zone in self.zones:
                self._wait_serial(zone, self._serial)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Powers the outside host off and deletes the bridge: stop the mail host first."""
        if self.bed is not None:
            self.bed.stop()
            self.bed = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def mail_host_bed_args(self) -> dict:
        """Bed() arguments that put a mail host on this world's bridge at NET.2,
        with this world's DNS server as its resolver (see mailhost.boot)."""
        return {"net": self.net, "host_id": self.mail_host_id, "bridge": self.bridge, "dns": self.dns_ip}

    # ---- DNS ----------------------------------------------------------------------

    def _knot_conf(self) -> str:
        zones = "".join(f"  - domain: {z}\n" for z in self.zones)
        return f"""\
# The bed's authoritative DNS (tests/lib/world.py). Zone files are written by the
# tests and loaded whole on `knotc zone-reload`; knot never writes them back.
server:
    rundir: "/run/knot"
    user: knot:knot
    listen: [ 0.0.0.0@53, ::@53 ]
log:
  - target: syslog
    any: info
database:
    storage: "/var/lib/knot"
template:
  - id: default
    storage: "{ZONE_DIR}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: on
zone:
{zones}"""

    def _base_records(self, zone: str) -> list[str]:
        if zone == "example.org":
            return ["@ MX 10 mail.example.org.", f"mail A {self.mail_ip}"]
        if zone == "example.net":
            return ["@ MX 10 mail.example.org."]
        if zone == OUTSIDE_DOMAIN:
            return [f"ns A {self.ip}", "@ MX 10 mx.example.com.", f"mx A {self.ip}"]
        if zone == self.reverse_zone:
            return [f"{self.mail_host_id} PTR {MAIL_HOST}.", f"{self.outside_id} PTR {OUTSIDE_HOST}."]
        raise ValueError(f"not a zone of the bed: {zone}")

    def _zone_text(self, zone: str) -> str:
        lines = [
            f"$ORIGIN {zone}.",
            f"$TTL {DEFAULT_TTL}",
            f"@ SOA ns.example.com. hostmaster.example.com. {self._serial} 1 1 1 1",
            "@ NS ns.example.com.",
            *self._base_records(zone),
            "; --- records published by the test (World.publish) ---",
            self._published.get(zone, ""),
        ]
        return "\n".join(lines) + "\n"

    def publish(self, zone: str, records: str, timeout: float = 10.0) -> None:
        """Replaces the test's records of `zone` with `records` (zone-file lines, e.g.
        what `postmaster dns` prints; relative names are relative to the zone, lines
        without a TTL get 1 s). SOA, NS and the base records stay; the serial goes
        up. Returns once the DNS server serves the new serial. Records knot cannot
        load raise ValueError, and the previous zone stays served."""
        if zone not in self.zones:
            raise ValueError(f"{zone!r} is not a zone of the bed ({', '.join(self.zones)})")
        bed = self._running()
        final = bed.path(f"{ZONE_DIR}/{zone}.zone")
        previous_records, previous_text = self._published.get(zone), final.read_text()
        self._published[zone] = records.strip("\n")
        self._serial += 1
        self._write_zone(zone, self._zone_text(zone))
        reload = bed.run(["knotc", "--blocking", "zone-reload", zone])
        if reload.returncode != 0:
            # knot keeps serving the zone it had; put its file back too.
            log = bed.journal("knot.service", lines=8)
            self._write_zone(zone, previous_text)
            if previous_records is None:
                self._published.pop(zone)
            else:
                self._published[zone] = previous_records
            raise ValueError(f"knot refused the new {zone} zone: {reload.stdout}{reload.stderr}\n{log}"
                             f"--- records:\n{records}")
        self._wait_serial(zone, self._serial, timeout)

    def _write_zone(self, zone: str, text: str) -> None:
        final = self._running().path(f"{ZONE_DIR}/{zone}.zone")
        tmp = final.with_name(f".{zone}.zone.new")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)  # knot never reads half a file

    def set_baseline(self, zone: str, records: str) -> None:
        """Publishes `records` as what `zone` holds between tests (e.g. what
        `postmaster dns` printed for the session's mail host): unpublish() comes back
        to them."""
        self._baseline[zone] = records.strip("\n")
        self.publish(zone, records)

    def baseline(self, zone: str) -> str:
        """The records set_baseline() gave `zone` ("" if none)."""
        return self._baseline.get(zone, "")

    def unpublish(self, zone: str) -> None:
        """Back to the zone's baseline (set_baseline), or to its base records."""
        if self._baseline.get(zone):
            self.publish(zone, self._baseline[zone])
        elif zone in self._published:
            self._published.pop(zone)
            self.publish(zone, "")
            self._published.pop(zone)

    def reset(self) -> None:
        """Every zone back to its baseline or base records."""
        for zone in list(self._published):
            self.unpublish(zone)

    def serial(self, zone: str) -> int | None:
        """The SOA serial the DNS server serves for `zone` now (None: no answer)."""
        out = self.dig(zone, "SOA")
        return int(out[0].split()[2]) if out else None

    def _wait_serial(self, zone: str, serial: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.serial(zone)) != serial:
            if time.monotonic() > deadline:
                raise BedError(f"{zone}: serial {got} served, {serial} expected after {timeout:.0f} s\n"
                               + self._running().journal("knot.service", lines=20))
            time.sleep(0.05)

    def dig(self, name: str, rtype: str = "A", bed: Bed | None = None) -> list[str]:
        """The answer records' data (dig +short), one string per record.

        bed=None asks the bed's DNS server directly (from the outside host); with
        bed=mail_host.bed the question goes through that bed's own /etc/resolv.conf,
        i.e. exactly as the mail host's resolver sees it."""
        if bed is None:
            cmd = ["dig", "+short", "+norecurse", "+time=2", "+tries=1", f"@{self.dns_ip}", name, rtype]
            out = self._running().run(cmd)
        else:
            out = bed.run(["dig", "+short", "+time=2", "+tries=1", name, rtype])
        if out.returncode != 0:
            raise BedError(f"dig {name} {rtype} failed ({out.returncode}): {out.stdout}{out.stderr}")
        return [line for line in out.stdout.splitlines() if line.strip()]

    def txt(self, name: str, bed: Bed | None = None) -> list[str]:
        """The TXT records of `name`, each one's character-strings joined."""
        return ["".join(re.findall(r'"((?:[^"\\]|\\.)*)"', rr)) for rr in self.dig(name, "TXT", bed)]

    # ---- mail -----------------------------------------------------------------------

    def messages(self, user: str = "someone") -> list[bytes]:
        """Every message delivered to `user`@example.com, oldest first, byte for byte."""
        maildir = self._running().path(f"/home/{user}/Maildir")
        files = [f for sub in ("new", "cur") if (maildir / sub).is_dir() for f in (maildir / sub).iterdir()]
        files.sort(key=lambda f: (f.stat().st_mtime_ns, f.name))
        return [f.read_bytes() for f in files]

    def wait_message(self, predicate: Callable[[email.message.EmailMessage], bool],
                     timeout: float = 30.0, user: str = "someone") -> bytes:
        """Waits for a delivered message whose parsed form satisfies `predicate`
        (e.g. lambda m: m["Subject"] == subject); returns its exact bytes."""
        deadline = time.monotonic() + timeout
        while True:
            for raw in self.messages(user):
                if predicate(email.message_from_bytes(raw, policy=email.policy.default)):
                    return raw
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching message for {user}@{OUTSIDE_DOMAIN} after {timeout:.0f} s:\n"
                                   + self._running().journal("postfix.service", lines=20)
                                   + self._running().journal(lines=15))
            time.sleep(0.2)

    def verify(self, message: bytes) -> dict:
        """What a receiver would conclude about `message` (as delivered here):

        {"dkim": "pass" | "fail" | "none",          # none: no DKIM-Signature at all
         "dkim_signatures": [{"d", "s", "result": "pass" | "fail", "output"}],  # in header order
         "spf": "pass" | "fail" | "softfail" | "neutral" | "none" | "permerror" | "temperror" | None,
         "spf_domain": the domain SPF checked (envelope sender's, or HELO's), "spf_header": raw,
         "from_domain": ..., "dmarc_aligned": bool}

        dkim: dkimverify's verdict per signature (any pass = pass). spf: the outside
        postfix's policyd-spf verdict (None: no Received-SPF header). dmarc_aligned
        is computed here (see the module docstring)."""
        parsed = email.message_from_bytes(message, policy=email.policy.compat32)
        signatures = []
        with self._file_inside(message) as inside:
            for index, value in enumerate(parsed.get_all("DKIM-Signature") or []):
                tags = _tags(value)
                run = self._running().run(f"dkimverify --index {index} < {inside}")
                output = (run.stdout + run.stderr).strip()
                # dkimverify exits 0 and prints "signature ok" only for a good signature.
                ok = run.returncode == 0 and "signature ok" in run.stdout
                signatures.append({"d": tags.get("d", "").lower(), "s": tags.get("s", ""),
                                   "result": "pass" if ok else "fail", "output": output})
        dkim = "none" if not signatures else ("pass" if any(s["result"] == "pass" for s in signatures) else "fail")

        spf_header = (parsed.get_all("Received-SPF") or [None])[0]  # topmost: added here
        spf = spf_domain = None
        if spf_header is not None:
            spf_header = " ".join(spf_header.split())
            spf = spf_header.split()[0].lower()
            fields = dict(re.findall(r"([\w-]+)=([^;\s]+)", spf_header))
            if fields.get("identity") == "mailfrom" and "@" in fields.get("envelope-from", ""):
                spf_domain = fields["envelope-from"].rsplit("@", 1)[1].lower().rstrip(">")
            else:
                spf_domain = fields.get("helo", "").lower() or None

        from_domain = None
        addresses = email.utils.getaddresses(parsed.get_all("From") or [])
        if len(addresses) == 1 and "@" in addresses[0][1]:
            from_domain = addresses[0][1].rsplit("@", 1)[1].lower()
        aligned = from_domain is not None and (
            any(s["result"] == "pass" and _org(s["d"]) == _org(from_domain) for s in signatures)
            or (spf == "pass" and spf_domain is not None and _org(spf_domain) == _org(from_domain)))
        return {"dkim": dkim, "dkim_signatures": signatures, "spf": spf, "spf_domain": spf_domain,
                "spf_header": spf_header, "from_domain": from_domain, "dmarc_aligned": aligned}

    def send(self, mail_from: str, rcpt: str | list[str], message: bytes | str | email.message.Message,
             port: int = 25, helo: str = OUTSIDE_HOST) -> dict:
        """Sends `message` from the outside host to the mail host's `port`, as another
        mail server would (STARTTLS when offered, certificate not checked, no AUTH).
        Returns {"refused": {rcpt: [code, text]}} when the transaction completed
        (refused empty: all accepted), or {"error": [code, text]} when the server
        refused it (MAIL FROM, all RCPTs, or DATA)."""
        if isinstance(message, email.message.Message):
            message = message.as_bytes(policy=email.policy.SMTP)
        elif isinstance(message, str):
            message = message.encode()
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        with self._file_inside(message) as inside:
            args = json.dumps({"host": self.mail_ip, "port": port, "helo": helo, "from": mail_from,
                               "to": rcpts, "file": inside})
            out = self._running().run(["python3", "-c", _SEND_SCRIPT, args], timeout=60)
        if out.returncode != 0:
            raise BedError(f"sending from the outside host failed:\n{out.stdout}{out.stderr}")
        return json.loads(out.stdout)

    @contextlib.contextmanager
    def _file_inside(self, data: bytes):
        """`data` as a file inside the outside host (its path there), byte for byte:
        commands' stdin through Bed.run is text and would re-encode it."""
        inside = f"/run/world-{uuid.uuid4().hex}.eml"
        path = self._running().path(inside)
        path.write_bytes(data)
        try:
            yield inside
        finally:
            path.unlink(missing_ok=True)

    def journal(self, unit: str | None = None, lines: int | None = 40) -> str:
        return self._running().journal(unit, lines=lines)

    def _running(self) -> Bed:
        if self.bed is None:
            raise BedError("the outside world is not running")
        return self.bed


def _tags(header_value: str) -> dict[str, str]:
    """A DKIM-Signature's tag=value list (folding whitespace removed)."""
    tags = {}
    for part in header_value.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            tags[key.strip()] = re.sub(r"\s+", "", value)
    return tags


def _org(domain: str) -> str:
    """The organizational domain, simplified: the last two labels."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


# Runs inside the outside host (python3 -c): parameters as JSON, the message in a file.
_SEND_SCRIPT = r"""
import json, smtplib, ssl, sys
p = json.loads(sys.argv[1])
msg = open(p["file"], "rb").read()
try:
    with smtplib.SMTP(p["host"], p["port"], local_hostname=p["helo"], timeout=30) as s:
        s.ehlo()
        if s.has_extn("starttls"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
        refused = s.sendmail(p["from"], p["to"], msg)
    print(json.dumps({"refused": {k: [v[0], v[1].decode(errors="replace")] for k, v in refused.items()}}))
except smtplib.SMTPRecipientsRefused as e:
    print(json.dumps({"error": [550, "all recipients refused"],
                      "refused": {k: [v[0], v[1].decode(errors="replace")] for k, v in e.recipients.items()}}))
except smtplib.SMTPResponseException as e:
    print(json.dumps({"error": [e.smtp_code, e.smtp_error.decode(errors="replace")]}))
"""
