"""The SSLContexts the mod_ssl directives describe (R92), and their check for configtest.

`server_context` for a TLS listener (SSLCertificate*, the chain file, SSLProtocol,
SSLCipherSuite, SSLHonorCipherOrder, SSLSessionTickets, SSLVerifyClient with
SSLCACertificateFile, SSLOpenSSLConfCmd's curve, DH parameters and options);
`client_context` for backend TLS legs (the SSLProxy* directives). `check_tls` builds
every context a configuration names, so that ``tunnel configtest`` reports a missing
file or a cipher string OpenSSL rejects with the line that set it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence

from ..config.model import Config, ProxyTLS, Scope, ServerTLS

__all__ = ["client_context", "server_context", "check_tls", "NO_CHECK_TIME"]

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}
#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python's ssl has no name for it).
NO_CHECK_TIME = 0x200000


def _load_chain(ctx: ssl.SSLContext, tls: ServerTLS) -> None:
    """The certificate, then SSLCertificateChainFile's certificates after it: Python's
    ssl reads a chain from one file only, so the two are joined in a private temporary
    file, removed at once."""
    if tls.chain_file is None:
        ctx.load_cert_chain(tls.certificate_file, tls.key_file)
        return
    with open(tls.certificate_file, "rb") as cert, open(tls.chain_file, "rb") as chain:
        joined = cert.read().rstrip(b"\n") + b"\n" + chain.read()
    fd, path = tempfile.mkstemp(prefix="tunnel-chain-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(joined)
        ctx.load_cert_chain(path, tls.key_file or tls.certificate_file)
    finally:
        os.unlink(path)


def server_context(tls: ServerTLS, protocols: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """The SSLContext of a TLS listener, ALPN offering ``protocols`` (the host's
    `Protocols`, R140) in that order of preference (OpenSSL picks the first of ours the
    client offers; none in common: no ALPN, and the connection is HTTP/1.1)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, tls)
    ctx.minimum_version = _VERSIONS[tls.min_protocol]
    ctx.maximum_version = _VERSIONS[tls.max_protocol]
    if tls.ciphers is not None:
        ctx.set_ciphers(tls.ciphers)
    if tls.honor_cipher_order is not None:
        if tls.honor_cipher_order:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.session_tickets is False:
        ctx.options |= ssl.OP_NO_TICKET
    if "NoRenegotiation" in tls.openssl_options:
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if tls.curves is not None:
        ctx.set_ecdh_curve(tls.curves)
    if tls.dh_params is not None:
        ctx.load_dh_params(tls.dh_params)
    if tls.verify_client != "none":
        ctx.load_verify_locations(cafile=tls.ca_file)
        ctx.verify_mode = _VERIFY[tls.verify_client]
    ctx.set_alpn_protocols(list(protocols) or ["http/1.1"])
    return ctx


def client_context(tls: ProxyTLS) -> ssl.SSLContext:
    """The SSLContext for backend TLS legs, from the SSLProxy* directives.

    SSLProxyCheckPeerName (and SSLProxyCheckPeerCN, its older half) Off: no name check;
    SSLProxyCheckPeerExpire Off: the dates are not checked (the chain still is).
    """
    ctx = ssl.create_default_context(cafile=tls.ca_file) if tls.ca_file else ssl.create_default_context()
    ctx.check_hostname = tls.verify and tls.check_peer_name and tls.check_peer_cn
    if not tls.verify:
        ctx.verify_mode = ssl.CERT_NONE
    elif not tls.check_peer_expire:
        ctx.verify_flags |= NO_CHECK_TIME
    if tls.machine_certificate_file:
        ctx.load_cert_chain(tls.machine_certificate_file)
    ctx.minimum_version = _VERSIONS[tls.min_protocol]
    ctx.maximum_version = _VERSIONS[tls.max_protocol]
    if tls.ciphers is not None:
        ctx.set_ciphers(tls.ciphers)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return str(exc)


def check_tls(config: Config) -> list[str]:
    """Build every server and backend context ``config`` names.

    Returns:
        One "file:line: text" (or "where: text") per context that cannot be built.
    """
    problems: list[str] = []
    servers = [config.tls] + [v.tls for v in config.vhosts]
    for tls in dict.fromkeys(t for t in servers if t is not None):
        files = (("SSLCertificateFile", tls.certificate_file), ("SSLCertificateKeyFile", tls.key_file),
                 ("SSLCertificateChainFile", tls.chain_file), ("SSLCACertificateFile", tls.ca_file),
                 ("SSLOpenSSLConfCmd DHParameters", tls.dh_params))  # fmt: skip
        missing = [f"{name} {path}" for name, path in files if path is not None and not os.path.isfile(path)]
        if missing:
            problems.append(f"{tls.file}:{tls.line}: the TLS settings of this SSLEngine name no such file: {', '.join(missing)}")
            continue
        try:
            server_context(tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(f"{tls.file}:{tls.line}: the TLS settings of this SSLEngine cannot be used: {_problem(exc)}")
    scopes: list[tuple[str, Scope]] = [("the server context", config.scope)]
    scopes += [(f"<VirtualHost> at {v.file}:{v.line}", v.scope) for v in config.vhosts]
    seen: set[ProxyTLS] = set()
    for where, scope in scopes:
        if not scope.proxy_tls.engine or scope.proxy_tls in seen:
            continue
        seen.add(scope.proxy_tls)
        try:
            client_context(scope.proxy_tls)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(f"{config.source}: the SSLProxy* settings of {where} cannot be used: {_problem(exc)}")
    return problems
