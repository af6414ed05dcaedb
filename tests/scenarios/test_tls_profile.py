"""The TLS profile (#11): testssl.sh, Debian's package, judges every port of the bed.

Where passwords travel (465, 587, 993, 995, 143, 110): Mozilla's "intermediate"
profile, guidelines 6.0: TLS 1.2 and 1.3 only, and on TLS 1.2 only forward-secret
AEAD suites: no anonymous, NULL, export or CBC suite, no static-RSA key exchange,
finite-field DH (if any) of at least 2048 bits. On 25 (MX, opportunistic TLS): what
the world's MTAs speak, but nothing export-grade, NULL or anonymous, and no DH group
below 2048 bits.

One testssl run per port (protocols, the cipher categories, every cipher per
protocol), all ports at once; testssl talks only to the bed's address and looks
nothing up (--ip, --nodns none). The bed's certificate is ECDSA; a second test
installs an RSA certificate for the finite-field DH suites that only an RSA key
can negotiate, and asks openssl for them on every port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import mailclient as mc
import mailhost

# port -> testssl's --starttls protocol (None: implicit TLS)
PASSWORD_PORTS = {465: None, 587: "smtp", 993: None, 995: None, 143: "imap", 110: "pop3"}
MX_PORTS = {25: "smtp"}
ALL_PORTS = {**MX_PORTS, **PASSWORD_PORTS}

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")

# testssl's name for a suite's bulk cipher (its -E table): the AEAD ones.
AEAD = {"aesgcm", "chacha20", "aesccm", "aesccm8", "ariagcm"}
# One row of testssl's -E table, e.g.
# "TLS 1.2   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256   ECDH 253   AESGCM   128   TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
# (key exchange "ECDH 253", "DH 2048" or "RSA"; bulk cipher "AES" is CBC).
ROW = re.compile(r"^(?:SSLv\d|TLS\s?v?1(?:\.\d)?)\s+x(?P<hex>[0-9a-f]+)\s+(?P<name>\S+)\s+(?P<kx>.+?)\s+"
                 r"(?P<enc>\S+)\s+(?P<bits>\d+)\s+(?P<iana>\S+)\s*$", re.I)
# testssl's cipher categories (--std) that must be empty: on every port, and on the
# password ports also the CBC one (3.0's "AVERAGE", 3.2's "OBSOLETED").
NEVER = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW")
NEVER_WITH_PASSWORDS = NEVER + ("cipherlist_AVERAGE", "cipherlist_OBSOLETED", "cipherlist_3DES_IDEA")


def run_testssl(ip: str, port: int, starttls: str | None, out: Path) -> list[dict]:
    """testssl's findings (its flat JSON) for one port."""
    jsonfile = out / f"testssl-{port}.json"
    jsonfile.unlink(missing_ok=True)
    cmd = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--ip", ip,
           "--connect-timeout", "10", "--openssl-timeout", "10",
           "--protocols", "--std", "--cipher-per-proto", "--jsonfile", str(jsonfile)]
    if starttls:
        cmd += ["--starttls", starttls]
    cmd.append(f"{ip}:{port}")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out,
                         env={**os.environ, "TERM": "dumb"})
    (out / f"testssl-{port}.txt").write_text(run.stdout + run.stderr)
    assert jsonfile.exists(), f"testssl wrote no findings for {port}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
    return json.loads(jsonfile.read_text())


def offered_suites(findings: list[dict]) -> list[dict]:
    """The suites testssl saw offered, one dict per (protocol, suite)."""
    suites = []
    for f in findings:
        m = re.match(r"^cipher-(?P<proto>[a-z0-9_]+)_x[0-9a-f]+$", f["id"])
        if not m:
            continue
        row = ROW.match(f["finding"])
        assert row, f"unparsed testssl row: {f}"
        suites.append({"proto": m["proto"], **row.groupdict()})
    return suites


def protocols(findings: list[dict]) -> dict[str, str]:
    ids = {"SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"}
    return {f["id"]: f["finding"] for f in findings if f["id"] in ids}


def problems(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["id"] in ("scanProblem", "scanTime") and f["severity"] in ("FATAL", "WARN")]


def dh_bits(kx: str) -> int | None:
    m = re.match(r"^DH\s+(\d+)$", kx.strip())
    return int(m[1]) if m else None


def is_anonymous(s: dict) -> bool:
    return s["name"].startswith(("ADH", "AECDH")) or "_anon_" in s["iana"]


def weak_on_mx(s: dict) -> list[str]:
    """What a suite on port 25 breaks of the floor every port keeps."""
    why = []
    if s["proto"] not in ("tls1_2", "tls1_3"):
        why.append("below TLS 1.2")
    if is_anonymous(s):
        why.append("anonymous")
    if "NULL" in s["name"] or "_NULL_" in s["iana"]:
        why.append("NULL")
    if "EXP" in s["name"] or "EXPORT" in s["iana"]:
        why.append("export")
    if (bits := dh_bits(s["kx"])) is not None and bits < 2048:
        why.append(f"DH {bits}")
    return why


def weak_on_password_port(s: dict) -> list[str]:
    """What a suite on a password port breaks of the profile: the floor, and AEAD
    with forward secrecy only."""
    why = weak_on_mx(s)
    if s["enc"].lower() not in AEAD:
        why.append(f"not AEAD ({s['enc']})")
    kx = s["kx"].strip()
    if s["proto"] != "tls1_3" and not kx.startswith(("ECDH", "DH")):
        why.append(f"no forward secrecy ({kx})")
    return why


@pytest.fixture(scope="module")
def verdicts(host, tmp_path_factory) -> dict[int, list[dict]]:
    if TESTSSL is None:
        pytest.fail("testssl.sh is not installed (tests/install-host-deps.sh installs it)")
    out = Path(os.environ.get("TLS_PROFILE_OUT") or tmp_path_factory.mktemp("testssl"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(ALL_PORTS)) as pool:
        runs = {p: pool.submit(run_testssl, host.ip, p, st, out) for p, st in ALL_PORTS.items()}
        result = {p: r.result() for p, r in runs.items()}
    print(f"testssl judged {len(result)} ports in {time.monotonic() - started:.1f} s ({out})")
    for port, findings in result.items():
        print(port, protocols(findings))
        for s in offered_suites(findings):
            print(f"  {port} {s['proto']} {s['name']} {s['kx']} {s['enc']}")
    return result


@pytest.mark.parametrize("port", sorted(ALL_PORTS))
def test_testssl_judges_the_port(verdicts, port):
    findings = verdicts[port]
    assert not problems(findings), problems(findings)
    protos = protocols(findings)
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert protos.get(old, "").startswith("not offered"), (port, old, protos)
    assert protos.get("TLS1_2", "").startswith("offered"), (port, protos)
    assert protos.get("TLS1_3", "").startswith("offered"), (port, protos)
    categories = {f["id"]: f["finding"] for f in findings if f["id"].startswith("cipherlist_")}
    assert "cipherlist_aNULL" in categories, (port, "testssl ran no cipher categories", categories)
    for c in NEVER_WITH_PASSWORDS if port in PASSWORD_PORTS else NEVER:
        assert categories.get(c, "not offered").startswith("not offered"), (port, c, categories)
    suites = offered_suites(findings)
    assert any(s["proto"] == "tls1_2" for s in suites), (port, "no TLS 1.2 suite at all", suites)
    judge = weak_on_mx if port in MX_PORTS else weak_on_password_port
    weak = {f"{s['proto']} {s['name']} ({s['kx'].strip()}, {s['enc']})": judge(s) for s in suites if judge(s)}
    assert not weak, f"port {port} offers what the profile forbids: {weak}"


LIVE = "/etc/letsencrypt/live/mail.example.org"
CERT_PORTS = sorted(ALL_PORTS)
# openssl s_client's -starttls for the STARTTLS ports
S_CLIENT_STARTTLS = {25: "smtp", 587: "smtp", 143: "imap", 110: "pop3"}
# Everything OpenSSL has for TLS 1.2 but the profile's suites (SECLEVEL=0: this
# client would take a 1024-bit group, so the server's choice shows).
NOT_THE_PROFILE = "ALL:COMPLEMENTOFALL:!ECDHE+AESGCM:!ECDHE+CHACHA20@SECLEVEL=0"


def s_client(ip: str, port: int, ciphers: str) -> tuple[str | None, int | None, str]:
    """A TLS 1.2 handshake offering only `ciphers`: (negotiated suite or None,
    finite-field DH bits or None, openssl's output)."""
    cmd = ["openssl", "s_client", "-connect", f"{ip}:{port}", "-tls1_2", "-cipher", ciphers]
    if port in S_CLIENT_STARTTLS:
        cmd += ["-starttls", S_CLIENT_STARTTLS[port]]
    out = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    suite = re.search(r"Cipher is (\S+)", text)
    suite = suite[1] if suite and suite[1] != "(NONE)" else None
    dh = re.search(r"Server Temp Key: DH, (\d+) bits", text)
    return suite, int(dh[1]) if dh else None, text


def _rsa_pair(host, stem: str) -> tuple[str, str, str]:
    """A 2048-bit RSA leaf for the host from the bed's CA: (chain, key, SHA-256 of the leaf)."""
    d = host.dir / "rsa"
    d.mkdir(exist_ok=True)
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    (d / f"{stem}.ext").write_text(f"subjectAltName=DNS:{mailhost.HOST_NAME}\nbasicConstraints=critical,CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth\n")
    run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={mailhost.HOST_NAME}",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr")
    run("x509", "-req", "-in", f"{stem}.csr", "-CA", str(host.ca.cert), "-CAkey", str(host.ca.key),
        "-CAcreateserial", "-days", "5", "-extfile", f"{stem}.ext", "-out", f"{stem}.crt")
    leaf = (d / f"{stem}.crt").read_text()
    der = ssl.PEM_cert_to_DER_cert(leaf)
    return leaf + host.ca.cert.read_text(), (d / f"{stem}.key").read_text(), hashlib.sha256(der).hexdigest()


def _install(host, server, chain: str, key: str, fingerprint: str) -> None:
    """Writes the pair where postmaster watches it (cp-style, through the live/
    symlinks) and waits until every port serves it."""
    host.bed.run(["sh", "-c", f"cat > {LIVE}/fullchain.pem"], input=chain, check=True)
    host.bed.run(["sh", "-c", f"cat > {LIVE}/privkey.pem"], input=key, check=True)
    everywhere = lambda: all(mc.served_fingerprint(server, p) == fingerprint for p in CERT_PORTS)
    mc.wait_for(f"certificate {fingerprint[:12]} on every port", everywhere, timeout=30)
    # An smtpd from before the switch can serve the old pair for 1-2 s more.
    time.sleep(2.5)
    mc.wait_for(f"certificate {fingerprint[:12]} still on every port", everywhere, timeout=30)


def test_with_an_rsa_certificate_no_weak_dh_and_still_only_the_profile(host, server):
    """The bed's certificate is ECDSA, so testssl above saw no suite that needs an
    RSA key: finite-field DH (DHE-RSA) and static RSA. With an RSA key, port 25
    offers DHE with a group of 2048 bits or more, and the password ports still
    nothing but the profile's ECDHE AEAD suites."""
    old_chain = host.bed.run(["cat", f"{LIVE}/fullchain.pem"], check=True).stdout
    old_key = host.bed.run(["cat", f"{LIVE}/privkey.pem"], check=True).stdout
    old_fp = hashlib.sha256(ssl.PEM_cert_to_DER_cert(old_chain.split("-----END CERTIFICATE-----")[0]
                                                     + "-----END CERTIFICATE-----\n")).hexdigest()
    chain, key, fingerprint = _rsa_pair(host, "rsa2048")
    _install(host, server, chain, key, fingerprint)
    try:
        seen = {}
        for port in CERT_PORTS:
            dhe, dh_bits_, dhe_out = s_client(host.ip, port, "kDHE@SECLEVEL=0")
            other, _, other_out = s_client(host.ip, port, NOT_THE_PROFILE)
            profile, _, profile_out = s_client(host.ip, port, "ECDHE+AESGCM:ECDHE+CHACHA20")
            seen[port] = (dhe, dh_bits_, other, profile)
            assert profile and profile.startswith("ECDHE-RSA-"), (port, profile_out[-1500:])
            if port in MX_PORTS:
                # Opportunistic: DHE is there for old MTAs, with a strong group.
                assert dhe and dhe.startswith("DHE-RSA-"), (port, dhe_out[-1500:])
                assert dh_bits_ is not None and dh_bits_ >= 2048, (port, dhe, dh_bits_)
                assert other, (port, "port 25 should still speak CBC/static-RSA suites to old MTAs", other_out[-1500:])
            else:
                assert dhe is None, (port, f"finite-field DH offered: {dhe} ({dh_bits_} bits)")
                assert other is None, (port, f"a suite outside the profile: {other}")
        print("with an RSA key:", seen)
    finally:
        _install(host, server, old_chain, old_key, old_fp)
