"""The seed's mail host in a test bed: what goes into /bed, and booting it.

Used by the scenario tests (tests/scenarios) and by the README's demo command, so
both run the same mail host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "bed"))

from bed import Bed  # noqa: E402
from pki import TestCA  # noqa: E402

HOST_NAME = "mail.example.org"
DOMAINS = ["example.org", "example.net"]
# example.org has a catch-all, example.net does not: the scenarios need both.
CATCH_ALL_DOMAIN = "example.org"
NO_CATCH_ALL_DOMAIN = "example.net"

# Passwords of the test users (the accounts file holds only their hashes).
PASSWORDS = {"thomas": "thomas-secret-1", "anna": "anna-secret-2", "carl": "carl-secret-3"}
# Every port a client reaches: SMTP, submission, submissions, IMAP(S), POP3(S).
PORTS = (25, 587, 465, 143, 993, 110, 995)

CONFIG = f"""\
host_name = "{HOST_NAME}"
domains = {DOMAINS!r}
accounts_file = "/etc/postmaster/accounts.toml"
[tls]
source = "files"
cert = "/etc/letsencrypt/live/mail.example.org/fullchain.pem"
key = "/etc/letsencrypt/live/mail.example.org/privkey.pem"
[postfix]
# The bed has no DNS, so sender domains cannot be looked up.
reject_unknown_sender_domain = false
[dovecot]
version = "2.4"
[logins]
# The scenarios log in wrongly on purpose, all from the test host's one address;
# test_logins.py lowers this for its own tests.
block_after_failures = 1000
[dkim]
# The bed's DNS answers at once: a published selector is noticed within a second.
# (Last: test_dkim.py appends to this table.)
dns_check_seconds = 1
"""


def binary() -> Path:
    """The release build of postmaster (the test command builds it first)."""
    path = REPO / "target" / "release" / "postmaster"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `cargo build --release` first")
    return path


def hash_password(password: str, scheme: str = "SHA512-CRYPT") -> str:
    out = subprocess.run([str(binary()), "hash-password", "--scheme", scheme],
                         input=password + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def seed_accounts() -> str:
    """The seed's accounts plus more mailboxes: thomas has the catch-all of
    example.org; anna is a real mailbox the catch-all must never swallow, with a
    quota; carl is disabled. One password scheme each."""
    return f"""\
[mailboxes.thomas]
password = "{hash_password(PASSWORDS['thomas'])}"

[mailboxes.anna]
password = "{hash_password(PASSWORDS['anna'], 'BLF-CRYPT')}"
quota = "50M"

# Disabled: no login anywhere, but mail to carl is still accepted and kept.
[mailboxes.carl]
password = "{hash_password(PASSWORDS['carl'], 'ARGON2ID')}"
disabled = true

[aliases]
postmaster = "thomas"
abuse = "thomas"
"sales@example.org" = ["thomas", "anna"]
"info@example.net" = "anna"

[catch_all]
"{CATCH_ALL_DOMAIN}" = "thomas"
"""


@dataclass
class MailHost:
    """A prepared /bed input directory and, once booted, its bed."""
    dir: Path
    ca: TestCA
    accounts: str
    bed: Bed | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ip(self) -> str:
        assert self.bed is not None
        return self.bed.ip


def prepare(dir: Path, accounts: str | None = None, config: str = CONFIG) -> MailHost:
    """Fills `dir` for /bed: binary, config, accounts, certificate, setup.sh."""
    if dir.exists():
        shutil.rmtree(dir)
    dir.mkdir(parents=True)
    shutil.copy2(binary(), dir / "postmaster")
    shutil.copy2(HERE / "bed-setup.sh", dir / "setup.sh")
    shutil.copytree(REPO / "units", dir / "units")
    (dir / "config.toml").write_text(config)
    accounts = accounts if accounts is not None else seed_accounts()
    (dir / "accounts.toml").write_text(accounts)
    ca = TestCA.create(dir / "ca")
    chain, key = ca.issue(dir / "tls", [HOST_NAME])
    chain.rename(dir / "tls" / "fullchain.pem")
    key.rename(dir / "tls" / "privkey.pem")
    return MailHost(dir=dir, ca=ca, accounts=accounts)


ACME_CONFIG = f"""\
host_name = "{HOST_NAME}"
domains = {DOMAINS!r}
accounts_file = "/etc/postmaster/accounts.toml"
[tls]
source = "acme"
[acme]
# pebble in the bed (tests/lib/bed-setup.sh): its API on 14000, every name resolved
# to 127.0.0.1 by pebble-challtestsrv, http-01 answered on port 80 by the daemon.
directory = "https://127.0.0.1:14000/dir"
trust_root = "/etc/postmaster/pebble-api.pem"
contact = ["mailto:postmaster@example.org"]
[postfix]
reject_unknown_sender_domain = false
[dovecot]
version = "2.4"
"""


def prepare_acme(dir: Path, bed_ip: str) -> MailHost:
    """The seed's mail host with its certificate from a pebble ACME CA in the bed.
    `bed_ip` goes into pebble's API certificate so the host can fetch its roots."""
    host = prepare(dir, config=ACME_CONFIG)
    pebble = dir / "pebble"
    pebble.mkdir()
    # pebble's API certificate, from a CA of its own that postmaster trusts.
    api_ca = TestCA.create(pebble / "api-ca", name="pebble API test CA")
    chain, key = api_ca.issue(pebble / "leaf", ["localhost", "IP:127.0.0.1", f"IP:{bed_ip}"])
    shutil.copy2(chain, pebble / "api.pem")
    shutil.copy2(key, pebble / "api.key")
    shutil.copy2(api_ca.cert, pebble / "api-ca.pem")
    (pebble / "config.json").write_text(
        '{"pebble": {"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",'
        ' "certificate": "/etc/pebble/api.pem", "privateKey": "/etc/pebble/api.key",'
        ' "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": false}}\n')
    return host


def pebble_root(host: MailHost) -> str:
    """pebble's issuing root (new at every pebble start), from its management API."""
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=str(host.dir / "pebble" / "api-ca.pem"))
    with urllib.request.urlopen(f"https://{host.bed.ip}:15000/roots/0", context=ctx, timeout=10) as r:
        return r.read().decode()


def wait_for_acme_certificate(host: MailHost, timeout: float = 60.0) -> dict:
    """Waits until the daemon serves a certificate it obtained over ACME; returns
    its status."""
    import json
    import time
    deadline = time.monotonic() + timeout
    while True:
        out = host.bed.run(["postmaster", "status", "--json"])
        if out.stdout.strip():
            status = json.loads(out.stdout)
            acme = status.get("acme") or {}
            verified = status["certificate"].get("verified") or {}
            if (acme.get("last_attempt") or {}).get("ok") and verified.get("ok"):
                return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ACME certificate after {timeout:.0f} s:\n{host.bed.journal('postmaster.service', lines=30)}")
        time.sleep(0.2)


def boot(host: MailHost, name: str = "pmscen", net: str = "10.231.1", world=None) -> Bed:
    """Boots the prepared host. Beds of other names and nets can run beside it.
    With a running world.World, the host joins its network (its net, not `net`)
    and resolves names with the world's DNS server."""
    network = world.mail_host_bed_args() if world is not None else {"net": net}
    # Debian's postfix listens on 25 at boot; the other ports open with setup.
    bed = Bed(bed_input_dir=host.dir, name=name, wait_ports=(25,), **network)
    bed.start()
    host.bed = bed
    try:
        res = bed.run(["/bin/sh", "-c", SETUP], timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"`{SETUP}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}\n"
                               + bed.journal(lines=60) + bed.run(["ss", "-ltnp"]).stdout)
        host.extra["setup_output"] = res.stdout
        for port in PORTS:
            bed.wait_port(port)
        wait_for_signer(bed)
    except BaseException:
        bed.stop()
        raise
    return bed


# The README's command (section "On Debian 13: one command"), from the directory the
# binary was copied to. config.toml is in place already (bed-setup.sh): setup reads
# it, and the flags must agree with it.
SETUP = (f"cd /bed && ./postmaster setup --host {HOST_NAME} "
         + " ".join(f"--domain {d}" for d in DOMAINS))


def wait_for_signer(bed: Bed, timeout: float = 60.0) -> None:
    """Waits until rspamd's milter (its socket in postfix's queue directory) accepts: until
    then postfix refuses submissions for later (451 4.7.1), and rspamd takes a few
    seconds to load its rules after boot."""
    import time
    deadline = time.monotonic() + timeout
    probe = "import socket; socket.socket(socket.AF_UNIX).connect('/var/spool/postfix/rspamd/milter.sock')"
    while bed.run(["python3", "-c", probe]).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rspamd's milter not listening after {timeout:.0f} s:\n"
                               + bed.journal("rspamd.service", lines=30))
        time.sleep(0.2)


def dns_zones(host: MailHost) -> dict[str, str]:
    """What `postmaster dns` tells the user to publish, split by domain: zone-file
    text for each hosted domain (and the host name, when addresses are configured)."""
    out = host.bed.run(["postmaster", "dns"], check=True).stdout
    zones: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("; ---- ") and line.endswith(" ----"):
            current = line[len("; ---- "):-len(" ----")]
            zones[current] = ""
        elif current is not None and line.strip():
            zones[current] += line + "\n"
    return zones


# Where the bed's daemon reads its certificate ([tls] source = "files", certbot's
# layout; tests/lib/bed-setup.sh).
LIVE = "/etc/letsencrypt/live/mail.example.org"


def new_pair(host: MailHost, subdir: str, stem: str) -> tuple[str, str, str]:
    """A new pair for the host from the bed's CA: (chain, key, SHA-256 of the leaf)."""
    import hashlib
    import ssl
    chain, key = host.ca.issue(host.dir / subdir, [HOST_NAME], stem=stem)
    der = ssl.PEM_cert_to_DER_cert(chain.read_text().split("-----END CERTIFICATE-----")[0]
                                   + "-----END CERTIFICATE-----\n")
    return chain.read_text(), key.read_text(), hashlib.sha256(der).hexdigest()


def install_pair(host: MailHost, chain: str, key: str) -> None:
    """Writes a pair where the daemon reads it, as certbot does: the key, then the chain."""
    host.bed.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=key, check=True)
    host.bed.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=chain, check=True)
