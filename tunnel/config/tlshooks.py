"""mod_ssl's directives beyond the certificate, mixed into the parser (R92, R93).

What Python's ``ssl`` can set is honoured (the chain file, client verification, the
TLS 1.2 cipher string, cipher order, session tickets, one ECDH curve, DH parameters,
the protocol range, OpenSSL options); what it cannot is accepted with a warning when
OpenSSL's default does the same job (the TLS 1.3 suites, a list of curves), and refused
by name otherwise (SSLCompression On, SSLVerifyClient optional_no_ca, other
SSLOpenSSLConfCmd commands). Cipher strings and files are checked when the contexts are
built (``tunnel configtest`` builds them).
"""

from __future__ import annotations

import re
from typing import Any

from .values import BadDirective, Expected, on_off, ssl_protocols, verify

__all__ = ["TLSHooks", "OPENSSL_OPTIONS"]

#: SSLOpenSSLConfCmd Options names tunnel can set, lower-cased -> the option's name.
OPENSSL_OPTIONS = {
    "serverpreference": "ServerPreference",
    "sessionticket": "SessionTicket",
    "compression": "Compression",
    "norenegotiation": "NoRenegotiation",
}

_CONF_COMMANDS = (
    "Curves, Groups, ECDHParameters, DHParameters, Protocol, MinProtocol, MaxProtocol, CipherString, "
    "Ciphersuites, Options"
)


class TLSHooks:
    """The SSL* handlers; values go to the ``tls.`` and ``proxy_tls.`` settings."""

    def warn(self, text: str) -> None:
        raise NotImplementedError

    def _set(self, setting: str, value: Any) -> None:
        raise NotImplementedError

    def _protocol_range(self, prefix: str, args: list[str], directive: str, *, openssl: bool = False) -> None:
        low, high, old = ssl_protocols(args, openssl=openssl)
        self._set(f"{prefix}.min_protocol", low)
        self._set(f"{prefix}.max_protocol", high)
        if old:
            shown = ", ".join({"sslv3": "SSLv3", "tlsv1": "TLSv1", "tlsv1.1": "TLSv1.1"}[p] for p in old)
            self.warn(f"{directive} enables {shown}, which tunnel never offers (TLSv1.2 and TLSv1.3 only)")

    def ssl_protocol(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected [+-]protocol ...")
        self._protocol_range("tls", args, "SSLProtocol")

    def _ssl_proxy_protocol(self, args: list[str]) -> None:
        if not args:
            raise BadDirective("expected [+-]protocol ...")
        self._protocol_range("proxy_tls", args, "SSLProxyProtocol")

    def _ciphers(self, prefix: str, args: list[str], directive: str) -> None:
        if len(args) == 2:
            protocol, spec = args[0].lower(), args[1]
            if protocol == "tlsv1.3":
                self.warn(
                    f"{directive} TLSv1.3 is accepted but not applied: Python's ssl cannot set the TLS 1.3 "
                    "suites, so OpenSSL's default ones are offered"
                )
                return
            if protocol != "ssl":
                raise Expected("SSL or TLSv1.3 before the cipher string", args[0])
        elif len(args) == 1:
            spec = args[0]
        else:
            raise BadDirective("expected [SSL|TLSv1.3] cipher-spec")
        if not spec:
            raise Expected("an OpenSSL cipher string", spec)
        self._set(f"{prefix}.ciphers", spec)

    def _ssl_cipher_suite(self, args: list[str]) -> None:
        self._ciphers("tls", args, "SSLCipherSuite")

    def _ssl_proxy_cipher_suite(self, args: list[str]) -> None:
        self._ciphers("proxy_tls", args, "SSLProxyCipherSuite")

    def _ssl_proxy_verify(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected none or require")
        lowered = args[0].lower()
        if lowered in ("optional", "optional_no_ca"):
            raise BadDirective(f"{args[0]} is not supported: use require (verify) or none")
        self._set("proxy_tls.verify", verify(args[0]))
        self._set("proxy_tls.verify_set", True)

    def _ssl_verify_client(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected none, optional or require")
        level = args[0].lower()
        if level == "optional_no_ca":
            raise BadDirective(
                "optional_no_ca is not supported: Python's ssl cannot accept a certificate it cannot verify; "
                "use optional or require with SSLCACertificateFile"
            )
        if level not in ("none", "optional", "require"):
            raise Expected("none, optional or require", args[0])
        self._set("tls.verify_client", level)
        if level != "none":
            self.warn(
                f"SSLVerifyClient {level}: SSLVerifyDepth cannot be applied (Python's ssl has no depth setting): "
                "a client chain of any length to a CA in SSLCACertificateFile is accepted"
            )

    def _ssl_verify_depth(self, args: list[str]) -> None:
        if len(args) != 1 or not re.fullmatch(r"[0-9]{1,3}", args[0]):
            raise BadDirective(f'expected a number, got "{" ".join(args)}"')
        self._set("tls.verify_depth", int(args[0]))

    def _ssl_compression(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadDirective("expected On or Off")
        if on_off(args[0]):
            raise BadDirective("On is not supported: TLS compression is off in tunnel (it leaks secrets, CRIME)")

    def _ssl_openssl_conf_cmd(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadDirective("expected command value")
        command, value = args[0].lower(), args[1]
        if command in ("curves", "groups", "ecdhparameters"):
            if command == "ecdhparameters" and value.lower() in ("auto", "automatic"):
                return
            names = [n for n in re.split(r"[:,]", value) if n]
            if len(names) == 1:
                self._set("tls.curves", names[0])
            elif not names:
                raise Expected("one or more curve names", value)
            else:
                self.warn(
                    f"SSLOpenSSLConfCmd {args[0]} {value}: Python's ssl can set one curve only, so OpenSSL's "
                    "default groups are offered (give one name to restrict them)"
                )
        elif command == "dhparameters":
            self._set("tls.dh_params", value)
        elif command == "protocol":
            self._protocol_range("tls", [w for w in re.split(r"[\s,]+", value) if w], "SSLOpenSSLConfCmd Protocol", openssl=True)
        elif command in ("minprotocol", "maxprotocol"):
            name = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}.get(value.lower())
            if name is None:
                raise Expected("TLSv1.2 or TLSv1.3 (tunnel offers no older protocol)", value)
            self._set(f"tls.{command[:3]}_protocol", name)
        elif command == "cipherstring":
            self._ciphers("tls", [value], "SSLOpenSSLConfCmd CipherString")
        elif command == "ciphersuites":
            self._ciphers("tls", ["TLSv1.3", value], "SSLOpenSSLConfCmd Ciphersuites")
        elif command == "options":
            self._openssl_options(value)
        else:
            raise BadDirective(f'command "{args[0]}" is not supported (tunnel knows {_CONF_COMMANDS})')

    def _openssl_options(self, value: str) -> None:
        for word in (w for w in re.split(r"[\s,]+", value) if w):
            on = not word.startswith("-")
            name = OPENSSL_OPTIONS.get(word.lstrip("+-").lower())
            if name is None:
                raise Expected(f"[-]option among {', '.join(OPENSSL_OPTIONS.values())}", word)
            if name == "ServerPreference":
                self._set("tls.honor_cipher_order", on)
            elif name == "SessionTicket":
                self._set("tls.session_tickets", on)
            elif name == "Compression" and on:
                raise BadDirective("Options Compression is not supported: TLS compression is off in tunnel (CRIME)")
            elif name == "NoRenegotiation":
                self._set("tls.openssl_options", ("NoRenegotiation",) if on else ())
