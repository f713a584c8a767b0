"""What `tunnel demo` needs besides the echo backend: its page and, for ``--tls``, a
throw-away self-signed certificate (with ``cryptography`` when installed, else the
``openssl`` command)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

__all__ = ["DEMO_PAGE", "throwaway_certificate", "listen_host"]


DEMO_PAGE = Path(__file__).with_name("demo.html")  # shipped as package data


def _san_entries(hosts: Sequence[str]) -> list[tuple[str, str]]:
    """("DNS"|"IP", value) for each name the demo certificate must cover."""
    import ipaddress

    entries: list[tuple[str, str]] = []
    for host in hosts:
        host = host.strip("[]")
        if not host or host in ("0.0.0.0", "::", "*"):
            continue
        try:
            entry = ("IP", str(ipaddress.ip_address(host)))
        except ValueError:
            entry = ("DNS", host)
        if entry not in entries:
            entries.append(entry)
    return entries


def _self_signed_with_cryptography(cert: Path, key: Path, sans: list[tuple[str, str]]) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnel demo (throw-away)")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.IPAddress(ipaddress.ip_address(v)) if k == "IP" else x509.DNSName(v) for k, v in sans]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _self_signed_with_openssl(cert: Path, key: Path, sans: list[tuple[str, str]]) -> None:
    import subprocess

    # Our own minimal configuration: the system openssl.cnf would add CA:TRUE.
    conf = cert.with_name("openssl.cnf")
    conf.write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n"
        "[dn]\nCN = tunnel demo (throw-away)\n"
        "[ext]\n"
        f"subjectAltName = {','.join(f'{k}:{v}' for k, v in sans)}\n"
        "basicConstraints = critical,CA:FALSE\nextendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
    )
    subprocess.run(
        ["openssl", "req", "-x509", "-config", str(conf), "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
    )


def throwaway_certificate(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path, str]:
    """A self-signed certificate and key for ``hosts`` (plus localhost, 127.0.0.1, ::1).

    Made with the ``cryptography`` package when it is installed (it is not a dependency
    of tunnel: trustme, a test dependency, brings it), else with the ``openssl`` command.

    Returns:
        (certificate path, key path, what made them).

    Raises:
        click.ClickException: neither is available, or openssl failed.
    """
    cert, key = directory / "demo-cert.pem", directory / "demo-key.pem"
    sans = _san_entries(["localhost", "127.0.0.1", "::1", *hosts])
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pass
    else:
        _self_signed_with_cryptography(cert, key, sans)
        return cert, key, "cryptography"
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        raise click.ClickException(
            "--tls needs a throw-away certificate: install the 'cryptography' package or the openssl command"
        )
    try:
        _self_signed_with_openssl(cert, key, sans)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise click.ClickException(f"openssl could not make a certificate: {detail.decode(errors='replace').strip() or exc}") from None
    return cert, key, "openssl"


def listen_host(listen: str) -> str:
    """The host part of a --listen address ("" when only a port is given)."""
    if listen.startswith("["):
        return listen[1 : listen.index("]")] if "]" in listen else listen
    host, sep, _ = listen.rpartition(":")
    return host if sep else ""
