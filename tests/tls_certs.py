"""A throwaway PKI made at test time with the ``openssl`` command line: a CA, a server
certificate for localhost/127.0.0.1, client certificates with chosen common names, and a
client certificate from a second CA the broker does not trust."""
import os
import shutil
import subprocess

import pytest

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: str, name: str) -> None:
    _openssl("req", "-x509", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days",
             "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: str, name: str, cn: str, ca: str, ext: str) -> None:
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    _openssl("req", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
             cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


class PKI:
    def __init__(self, d: str):
        self.dir = d
        self.ca = os.path.join(d, "ca.pem")
        self.server_cert = os.path.join(d, "server.pem")
        self.server_key = os.path.join(d, "server.key")

    def client(self, cn: str) -> tuple:
        """(certfile, keyfile) of a client certificate for ``cn`` signed by the test CA."""
        name = f"client-{cn}"
        if not os.path.exists(os.path.join(self.dir, f"{name}.pem")):
            _leaf(self.dir, name, cn, "ca", "extendedKeyUsage=clientAuth\n")
        return os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}.key")

    def untrusted_client(self, cn: str) -> tuple:
        name = f"rogue-{cn}"
        if not os.path.exists(os.path.join(self.dir, "rogue-ca.pem")):
            _ca(self.dir, "rogue-ca")
        if not os.path.exists(os.path.join(self.dir, f"{name}.pem")):
            _leaf(self.dir, name, cn, "rogue-ca", "extendedKeyUsage=clientAuth\n")
        return os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    d = str(tmp_path_factory.mktemp("pki"))
    _ca(d, "ca")
    _leaf(d, "server", "localhost", "ca",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    return PKI(d)
