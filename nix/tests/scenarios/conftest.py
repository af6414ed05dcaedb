"""The scenario tests' mail host in a NixOS VM test: the mail node of nix/tests.

Replaces tests/scenarios/conftest.py (which boots a Debian bed) in the client VM;
test_mail_flow.py and mailclient.py are the bed's own files, unchanged. The fixtures
give them what the bed's give:

- `server`: where the mail host is (the `mail` node) and the CA that signed its
  certificate;
- `host.dir / "tls"`: a certificate pair from that CA, for the TLS control check;
- `host.bed.run(argv)`: a command on the mail host (over ssh, as root).

Everything comes from the environment that nix/tests/common.nix sets.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import mailhost
from mailclient import Server


@dataclass(frozen=True)
class Remote:
    """Runs commands on the mail node, like tests/bed/bed.py's Bed.run."""

    target: str
    key: str
    ssh: str

    def run(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
        command = [
            self.ssh, "-i", self.key,
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            self.target, shlex.join(argv),
        ]
        return subprocess.run(command, capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class Host:
    dir: Path
    ip: str
    bed: Remote


@pytest.fixture(scope="session")
def host() -> Host:
    env = os.environ
    return Host(
        dir=Path(env["POSTMASTER_TEST_PKI"]),
        ip=env["POSTMASTER_TEST_SERVER"],
        bed=Remote(env["POSTMASTER_TEST_SSH"], env["POSTMASTER_TEST_SSH_KEY"], env["POSTMASTER_TEST_SSH_BIN"]),
    )


@pytest.fixture(scope="session")
def server(host: Host) -> Server:
    return Server(address=host.ip, ca_file=os.environ["POSTMASTER_TEST_CA"])


@pytest.fixture
def thomas():
    return ("thomas", mailhost.PASSWORDS["thomas"])


@pytest.fixture
def anna():
    return ("anna", mailhost.PASSWORDS["anna"])
