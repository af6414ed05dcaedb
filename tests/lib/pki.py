"""A throwaway certificate authority for tests, made with the openssl command.

The mail host's certificate is signed by it, so clients in the tests verify the
server for real (CA file + server name), as a mail client would.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class TestCA:
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def key(self) -> Path:
        return self.dir / "ca.key"

    @classmethod
    def create(cls, dir: Path, name: str = "postmaster test CA") -> "TestCA":
        dir.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", f"/CN={name}", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=dir,
        )
        return cls(dir)

    def issue(self, out_dir: Path, names: list[str], days: int = 10, stem: str = "leaf",
              not_before_days_ago: int = 0) -> tuple[Path, Path]:
        """A leaf for `names` ("IP:…" for an address): returns (fullchain.pem,
        privkey.pem) in out_dir."""
        out_dir.mkdir(parents=True, exist_ok=True)
        key = out_dir / f"{stem}.key"
        csr = out_dir / f"{stem}.csr"
        crt = out_dir / f"{stem}.crt"
        ext = out_dir / f"{stem}.ext"
        ext.write_text(
            "subjectAltName=" + ",".join(n if n.startswith("IP:") else f"DNS:{n}" for n in names) + "\n"
            "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", f"/CN={names[0].removeprefix('IP:')}", "-keyout", str(key), "-out", str(csr), cwd=out_dir)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-days", str(days), "-extfile", str(ext), "-out", str(crt), cwd=out_dir)
        chain = out_dir / f"{stem}.fullchain.pem"
        chain.write_text(crt.read_text() + self.cert.read_text())
        csr.unlink()
        ext.unlink()
        return chain, key
