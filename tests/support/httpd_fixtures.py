"""The published httpd configurations in tests/fixtures/httpd/ and how the tests run them.

Each `Fixture` says which textual substitutions make the published file run on loopback
(ports, host names, certificate paths, log paths: nothing else), which listening ports
("roles": the port the file was written for, e.g. ``"80"``, ``"443"``) the harness must
add because the file has no ``Listen`` of its own, which backends stand behind it, and
which requests (`Probe`) exercise the decisions the file makes. The same rendered text is
loaded by tunnel and by Apache httpd (tests/e2e/test_httpd_side_by_side.py).

Templates in a substitution's replacement: ``{p80}``, ``{p443}``... the proxy's port for
that role; ``{b1}``, ``{b2}``, ``{b3}`` the backends' ports; ``{cert}``, ``{key}``,
``{certkey}`` (certificate and key in one PEM), ``{ca}``, ``{logdir}``, ``{empty}`` (an
empty file), ``{dh}`` (DH parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "httpd"

#: Applied to every fixture, after its own substitutions: log paths into the test's dir.
COMMON_SUBS: tuple[tuple[str, str], ...] = (
    ("\\${APACHE_LOG_DIR}", "{logdir}"),
    ("${APACHE_LOG_DIR}", "{logdir}"),
    ("/var/log/apache2/", "{logdir}/"),
    ("/etc/letsencrypt/options-ssl-apache.conf", "{empty}"),
)


@dataclass(frozen=True)
class Probe:
    """One request sent to both proxies: a plain GET (``ws=False``) or a WebSocket
    upgrade followed by one echoed message, on the listening port of ``role``, with
    ``Host: host`` and the extra ``headers``."""

    name: str
    path: str
    host: str
    role: str = "80"
    ws: bool = False
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Fixture:
    name: str
    subs: tuple[tuple[str, str], ...]
    roles: dict[str, str]  # role -> "http" | "https"
    listen: tuple[str, ...] = ()  # roles the file has no Listen line for
    backends: int = 1
    tls_backends: bool = False
    probes: tuple[Probe, ...] = ()
    #: httpd itself refuses the published text (its first error is then compared).
    httpd_rejects: bool = False

    @property
    def path(self) -> Path:
        return FIXTURE_DIR / f"{self.name}.conf"

    def render(self, values: dict[str, str]) -> str:
        """The published text with the substitutions applied (``values`` fill the
        templates)."""
        text = self.path.read_text()
        for old, new in (*self.subs, *COMMON_SUBS):
            if old in text:
                text = text.replace(old, new.format(**values))
        return text

    def prelude(self, values: dict[str, str]) -> str:
        """What the harness puts before the file, for both proxies: a ``Listen`` for each
        role the file lacks one for, and the test certificate at server level when the
        file has a TLS port (a published vhost with ``SSLEngine on`` and no certificate
        of its own inherits it)."""
        lines = []
        for role in self.listen:
            scheme = " https" if self.roles[role] == "https" else ""
            lines.append(f"Listen 127.0.0.1:{values['p' + role]}{scheme}")
        if "https" in self.roles.values():
            lines += [f"SSLCertificateFile {values['cert']}", f"SSLCertificateKeyFile {values['key']}"]
        return "\n".join(lines) + "\n"


def _ws(name: str, path: str, host: str, role: str = "80", headers: tuple[tuple[str, str], ...] = ()) -> Probe:
    return Probe(name, path, host, role, True, headers)


def _get(name: str, path: str, host: str, role: str = "80", headers: tuple[tuple[str, str], ...] = ()) -> Probe:
    return Probe(name, path, host, role, False, headers)


FIXTURES: dict[str, Fixture] = {}


def _add(f: Fixture) -> None:
    FIXTURES[f.name] = f


_add(Fixture(
    "socketio",
    # Debian's apache2 has mod_unixd built in: loading it again is an error there.
    subs=(("Listen 80", "Listen 127.0.0.1:{p80}"), ("localhost:3000", "127.0.0.1:{b1}"),
          ("LoadModule unixd_module                 modules/mod_unixd.so\n", "")),
    roles={"80": "http"},
    probes=(
        _get("polling", "/socket.io/?EIO=4&transport=polling", "example.com"),
        _ws("upgrade", "/socket.io/?EIO=4&transport=websocket", "example.com"),
        _get("page", "/chat/index.html?room=1", "example.com"),
    ),
))
_add(Fixture(
    "socketio-sticky",
    subs=(("app01:3000", "127.0.0.1:{b1}"), ("app02:3000", "127.0.0.1:{b2}"), ("app03:3000", "127.0.0.1:{b3}")),
    roles={"80": "http"},
    listen=("80",),
    backends=3,
    probes=(
        _get("first-without-cookie", "/socket.io/?EIO=4&transport=polling", "example.com"),
        _get("sticky-app02", "/socket.io/?EIO=4&transport=polling&sid=a", "example.com", headers=(("Cookie", "SERVERID=sticky.app02"),)),
        _ws("sticky-ws-app03", "/socket.io/?EIO=4&transport=websocket&sid=a", "example.com", headers=(("Cookie", "SERVERID=sticky.app03"),)),
    ),
))
_add(Fixture(
    "jupyterhub",
    subs=(
        ("Listen 80", "Listen 127.0.0.1:{p80}"),
        ("Listen 443", "Listen 127.0.0.1:{p443} https"),
        ("<VirtualHost HUB.DOMAIN.TLD:80>", "<VirtualHost 127.0.0.1:{p80}>"),
        ("<VirtualHost HUB.DOMAIN.TLD:443>", "<VirtualHost 127.0.0.1:{p443}>"),
        ("/etc/letsencrypt/live/HUB.DOMAIN.TLD/fullchain.pem", "{cert}"),
        ("/etc/letsencrypt/live/HUB.DOMAIN.TLD/privkey.pem", "{key}"),
        ("/etc/ssl/certs/dhparam.pem", "{dh}"),
        ("127.0.0.1:8000", "127.0.0.1:{b1}"),
    ),
    roles={"80": "http", "443": "https"},
    probes=(
        _get("http-redirect", "/hub/login", "HUB.DOMAIN.TLD"),
        _get("hub-page", "/hub/login?next=%2Fhub%2F", "HUB.DOMAIN.TLD", "443"),
        _ws("kernel-channels", "/user/alice/api/kernels/k1/channels?session_id=s", "HUB.DOMAIN.TLD", "443"),
    ),
))
_add(Fixture(
    "jupyterhub-prefix",
    subs=(("127.0.0.1:8000", "127.0.0.1:{b1}"),),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _get("hub", "/jhub/hub/home", "hub.example.test"),
        _ws("kernel-without-ws-route", "/jhub/user/a/api/kernels/k/channels", "hub.example.test"),
        _get("outside-prefix", "/other", "hub.example.test"),
    ),
))
_add(Fixture(
    "gitea",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("localhost:3000", "127.0.0.1:{b1}")),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _get("repo", "/user/repo/src/branch/main", "git.example.com"),
        _get("encoded-slash", "/user/repo/raw/branch/a%2Fb", "git.example.com"),
        _ws("upgrade-on-http-route", "/user/events", "git.example.com"),
    ),
))
_add(Fixture(
    "gitea-subpath",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("localhost:3000", "127.0.0.1:{b1}")),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _get("subpath", "/git/user/repo", "git.example.com"),
        _get("prefix-without-slash", "/gitfoo", "git.example.com"),
        _get("encoded-slash", "/git/a%2Fb", "git.example.com"),
    ),
))
_add(Fixture(
    "synapse",
    subs=(("<VirtualHost *:443>", "<VirtualHost *:{p443}>"), ("<VirtualHost *:8448>", "<VirtualHost *:{p8448}>"),
          ("127.0.0.1:8008", "127.0.0.1:{b1}")),
    roles={"443": "https", "8448": "https"},
    listen=("443", "8448"),
    probes=(
        _get("client-api", "/_matrix/client/versions", "matrix.example.com", "443"),
        _get("synapse-client", "/_synapse/client/new_user_consent?u=1", "matrix.example.com", "443"),
        _get("encoded", "/_matrix/media/r0/download/a%2Fb", "matrix.example.com", "443"),
        _get("federation", "/_matrix/federation/v1/version", "example.com", "8448"),
        _get("federation-no-synapse-client", "/_synapse/client/x", "example.com", "8448"),
    ),
))
_add(Fixture(
    "zulip",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("<VirtualHost *:443>", "<VirtualHost *:{p443}>"),
          ("internal.zulip.hostname:443", "localhost:{b1}"),
          ("/etc/letsencrypt/live/zulip.example.com/fullchain.pem", "{cert}"),
          ("/etc/letsencrypt/live/zulip.example.com/privkey.pem", "{key}")),
    roles={"80": "http", "443": "https"},
    listen=("80", "443"),
    tls_backends=True,
    probes=(
        _get("http-redirect", "/login/?next=1", "zulip.example.com"),
        _get("proxied", "/json/events?queue_id=1", "zulip.example.com", "443"),
        _ws("upgrade-through-https-rewrite", "/sockjs/websocket", "zulip.example.com", "443"),
    ),
))
_add(Fixture(
    "guacamole",
    subs=(("HOSTNAME:8080", "127.0.0.1:{b1}"),),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _get("app", "/guacamole/api/session?token=t", "guac.example.test"),
        _ws("tunnel", "/guacamole/websocket-tunnel?token=t", "guac.example.test"),
        _get("tunnel-plain", "/guacamole/websocket-tunnel", "guac.example.test"),
    ),
))
_add(Fixture(
    "jellyfin",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("<VirtualHost *:443>", "<VirtualHost *:{p443}>"),
          ("/etc/letsencrypt/live/DOMAIN_NAME/fullchain.pem", "{cert}"),
          ("/etc/letsencrypt/live/DOMAIN_NAME/privkey.pem", "{key}"),
          ("DOMAIN_NAME", "jellyfin.example.test"), ("SERVER_IP_ADDRESS:8096", "127.0.0.1:{b1}")),
    roles={"80": "http", "443": "https"},
    listen=("80", "443"),
    probes=(
        _get("http-redirect", "/web/index.html", "jellyfin.example.test"),
        _ws("socket", "/socket?api_key=k&deviceId=d", "jellyfin.example.test", "443"),
        _get("socket-plain", "/socket", "jellyfin.example.test", "443"),
        _get("web", "/web/index.html", "jellyfin.example.test", "443"),
        _get("acme-excluded", "/.well-known/acme-challenge/t", "jellyfin.example.test", "443"),
    ),
))
_add(Fixture(
    "jellyfin-subpath",
    subs=(("127.0.0.1:8096", "127.0.0.1:{b1}"),),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _ws("socket", "/jellyfin/socket?api_key=k", "media.example.test"),
        _get("web", "/jellyfin/web/index.html", "media.example.test"),
        _get("socket-plain", "/jellyfin/socket", "media.example.test"),
    ),
))
_add(Fixture(
    "nextcloud-notify-push",
    subs=(("127.0.0.1:7867", "127.0.0.1:{b1}"),),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _ws("push-socket", "/push/ws", "cloud.example.com"),
        _get("push-http", "/push/test/cookie", "cloud.example.com"),
        _get("push-socket-plain", "/push/ws", "cloud.example.com"),
    ),
))
_add(Fixture(
    "uptime-kuma",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("localhost:3001", "127.0.0.1:{b1}")),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _ws("socket", "/socket.io/?EIO=4&transport=websocket", "sub.domain.com"),
        _get("dashboard", "/dashboard/1", "sub.domain.com"),
    ),
))
_add(Fixture(
    "uptime-kuma-ssl",
    subs=(("<VirtualHost *:443>", "<VirtualHost *:{p443}>"), ("localhost:3001", "127.0.0.1:{b1}"),
          ("/path/to/ssl/cert/crt", "{cert}"), ("/path/to/ssl/key/key", "{key}")),
    roles={"443": "https"},
    listen=("443",),
    probes=(
        _ws("socket", "/socket.io/?EIO=4&transport=websocket", "sub.domain.com", "443"),
        _get("dashboard", "/dashboard/1", "sub.domain.com", "443"),
    ),
))
_add(Fixture(
    "vaultwarden",
    subs=(("<VirtualHost *:443>", "<VirtualHost *:{p443}>"), ("bitwarden.$hostname.$domainname", "bitwarden.example.test"),
          ("${SSLCERTIFICATE}", "{cert}"), ("${SSLKEY}", "{key}"), ("${SSLCA}", "{ca}"), ("    ${SSLCHAIN}\n", ""),
          ("<SERVER>:80", "127.0.0.1:{b1}")),
    roles={"443": "https"},
    listen=("443",),
    probes=(
        _ws("notifications", "/notifications/hub?access_token=t", "bitwarden.example.test", "443"),
        _get("api", "/api/config", "bitwarden.example.test", "443"),
    ),
))
_add(Fixture(
    "zammad",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("127.0.0.1:3000", "127.0.0.1:{b1}"),
          ("127.0.0.1:6042", "127.0.0.1:{b2}")),
    roles={"80": "http"},
    listen=("80",),
    backends=2,
    probes=(
        _get("api", "/api/v1/tickets?page=2", "localhost"),
        _ws("websocket", "/ws", "localhost"),
        _get("websocket-plain", "/ws", "localhost"),
        _get("assets-excluded", "/assets/app.js", "localhost"),
    ),
))
_add(Fixture(
    "gotify",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("<VirtualHost *:443>", "<VirtualHost *:{p443}>"),
          ("GOTIFY_SERVER_PORT", "{b1}"),
          ("/etc/letsencrypt/live/domain.tld/fullchain.pem", "{cert}"),
          ("/etc/letsencrypt/live/domain.tld/privkey.pem", "{key}")),
    roles={"80": "http", "443": "https"},
    listen=("80", "443"),
    httpd_rejects=True,  # "Redirect / https://domain.tld /": three arguments, the first no status
))
_add(Fixture(
    "jenkins",
    subs=(("localhost:8081", "127.0.0.1:{b1}"),),
    roles={"80": "http"},
    listen=("80",),
    probes=(
        _get("job", "/jenkins/job/build/lastBuild/", "ci.example.test"),
        _get("encoded-slash", "/jenkins/job/a%2Fb/", "ci.example.test"),
        _get("location-rewritten", "/jenkins/__redirect", "ci.example.test"),
        _ws("upgrade-on-http-route", "/jenkins/wsagents/", "ci.example.test"),
    ),
))
_add(Fixture(
    "jenkins-https",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("<VirtualHost *:443>", "<VirtualHost *:{p443}>"),
          ("NameVirtualHost *:80", "NameVirtualHost *:{p80}"), ("NameVirtualHost *:443", "NameVirtualHost *:{p443}"),
          ("/etc/ssl/certs/cert.pem", "{certkey}"), ("localhost:8080", "127.0.0.1:{b1}")),
    roles={"80": "http", "443": "https"},
    listen=("80", "443"),
    probes=(
        _get("http-redirect", "/job/x/", "www.example.com"),
        _get("job", "/job/x/", "www.example.com", "443"),
        _get("location-rewritten", "/__redirect", "www.example.com", "443"),
    ),
))
_add(Fixture(
    "ntfy",
    subs=(("<VirtualHost *:80>", "<VirtualHost *:{p80}>"), ("<VirtualHost *:443>", "<VirtualHost *:{p443}>"),
          ("/etc/letsencrypt/live/ntfy.sh/fullchain.pem", "{cert}"),
          ("/etc/letsencrypt/live/ntfy.sh/privkey.pem", "{key}"),
          ("127.0.0.1:2586", "127.0.0.1:{b1}")),
    roles={"80": "http", "443": "https"},
    listen=("80", "443"),
    probes=(
        _get("topic-redirect", "/mytopic", "ntfy.sh"),
        _get("topic-json", "/mytopic/json?poll=1", "ntfy.sh"),
        _ws("topic-ws", "/mytopic/ws", "ntfy.sh"),
        _ws("topic-ws-tls", "/mytopic/ws", "ntfy.sh", "443"),
        _get("health-tls", "/v1/health", "ntfy.sh", "443"),
    ),
))

#: Every fixture file has a spec, and every spec a file.
assert sorted(FIXTURES) == sorted(p.stem for p in FIXTURE_DIR.glob("*.conf")), "fixture specs and files differ"


def materials(tmp: Path) -> dict[str, str]:
    """Write the files the substitutions point at into ``tmp`` (a test CA and a server
    certificate for every host name the fixtures use, the key, the two in one file, an
    empty include, a log directory, DH parameters) and return the template values for
    them. ``ca_pem`` is the CA certificate clients trust."""
    import subprocess

    import trustme

    ca = trustme.CA()
    names = sorted({p.host for f in FIXTURES.values() for p in f.probes} | {"localhost", "127.0.0.1"})
    cert = ca.issue_cert(*names)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "certkey.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    (tmp / "empty.conf").write_text("")
    dh = tmp / "dhparam.pem"
    # RFC 7919's ffdhe2048 group: named parameters, written at once (no prime search).
    subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", str(dh)],
                   check=False, capture_output=True, timeout=30)
    return {
        "cert": str(tmp / "cert.pem"),
        "key": str(tmp / "key.pem"),
        "certkey": str(tmp / "certkey.pem"),
        "ca": str(tmp / "ca.pem"),
        "empty": str(tmp / "empty.conf"),
        "logdir": str(tmp / "logs"),
        "dh": str(dh),
    }
