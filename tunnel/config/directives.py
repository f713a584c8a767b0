"""Where each directive may stand, and what reads it: the parser's tables.

`Ctx` names the contexts; `SETTINGS` the directives that set one value (with their
value parser), `HANDLERS` those with a method of their own on the parser, `SECTIONS`
the sections. Kept apart from the parser so that configtest can name directives too.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from .h2 import h2_mem, h2_streams, h2_window
from .statushooks import handler_name
from .values import (
    encoded_slashes,
    on_off,
    positive_int,
    request_body_limit,
    seconds,
    seconds_ms,
    text_value,
    via_mode,
)

__all__ = ["Ctx", "SETTINGS", "HANDLERS", "SECTIONS"]


class Ctx(Enum):
    """Where a directive stands."""

    SERVER = "the server context"
    VHOST = "<VirtualHost>"
    LOCATION = "<Location>"
    PROXY = "<Proxy balancer://...>"
    PROXY_URL = "<Proxy URL>"
    REQUIRE = "<RequireAll|Any|None>"


_S = frozenset({Ctx.SERVER})
_SV = frozenset({Ctx.SERVER, Ctx.VHOST})
_SVL = frozenset({Ctx.SERVER, Ctx.VHOST, Ctx.LOCATION})
_SVP = frozenset({Ctx.SERVER, Ctx.VHOST, Ctx.PROXY})
_V = frozenset({Ctx.VHOST})
_ALL = frozenset(Ctx)
_AUTH = frozenset({Ctx.SERVER, Ctx.VHOST, Ctx.LOCATION, Ctx.PROXY, Ctx.PROXY_URL})


#: Directives that set one value: lower-case name -> (name, settings key, parser, contexts).
#: Keys without a dot are `Scope` fields; ``limits.``, ``proxy_tls.`` and ``tls.`` ones
#: go to `Limits`, `ProxyTLS` and `ServerTLS`.
SETTINGS: dict[str, tuple[str, str, Callable[[str], Any], frozenset[Ctx]]] = {
    spec[0].lower(): spec
    for spec in (
        ("ProxyWebsocketAsync", "websocket_async", on_off, _SVL),
        ("ProxyWebsocketAsyncDelay", "websocket_async_delay", seconds_ms, _SVL),
        ("ProxyWebsocketIdleTimeout", "websocket_idle_timeout", seconds_ms, _SVL),
        ("ProxyWebsocketPingInterval", "websocket_ping_interval", seconds_ms, _SVL),
        ("ProxyWebsocketHalfCloseTimeout", "websocket_half_close_timeout", seconds_ms, _SVL),
        ("ProxyWebsocketFallbackToProxyHttp", "fallback_to_proxy_http", on_off, _SVL),
        ("ProxyPreserveHost", "preserve_host", on_off, _SVL),
        ("ProxyAddHeaders", "add_headers", on_off, _SVL),
        ("Timeout", "timeout", seconds, _SV),
        ("ProxyTimeout", "proxy_timeout", seconds, _SV),
        ("LimitRequestLine", "limits.request_line", positive_int, _SV),
        ("LimitRequestFieldSize", "limits.field_size", positive_int, _SV),
        ("LimitRequestFields", "limits.fields", positive_int, _SV),
        ("AllowEncodedSlashes", "limits.allow_encoded_slashes", encoded_slashes, _SV),
        ("SSLProxyEngine", "proxy_tls.engine", on_off, _SV),
        ("SSLProxyCACertificateFile", "proxy_tls.ca_file", text_value, _SV),
        ("SSLProxyCheckPeerName", "proxy_tls.check_peer_name", on_off, _SV),
        ("SSLProxyMachineCertificateFile", "proxy_tls.machine_certificate_file", text_value, _SV),
        ("SSLCertificateFile", "tls.certificate_file", text_value, _SV),
        ("SSLCertificateKeyFile", "tls.key_file", text_value, _SV),
        ("SSLCertificateChainFile", "tls.chain_file", text_value, _SV),
        ("SSLCACertificateFile", "tls.ca_file", text_value, _SV),
        ("SSLHonorCipherOrder", "tls.honor_cipher_order", on_off, _SV),
        ("SSLSessionTickets", "tls.session_tickets", on_off, _SV),
        ("SSLProxyCheckPeerCN", "proxy_tls.check_peer_cn", on_off, _SV),
        ("SSLProxyCheckPeerExpire", "proxy_tls.check_peer_expire", on_off, _SV),
        ("RewriteEngine", "rewrite_engine", on_off, _SVL),
        ("DocumentRoot", "document_root", text_value, _SV),
        ("LimitRequestBody", "limit_request_body", request_body_limit, _SVL),
        ("ProxyVia", "via", via_mode, _SV),
        ("SetHandler", "handler", handler_name, _SVL),
        ("H2WebSockets", "h2_websockets", on_off, _SV),
        ("H2MaxSessionStreams", "h2_max_session_streams", h2_streams, _SV),
        ("H2WindowSize", "h2_window_size", h2_window, _SV),
        ("H2StreamMaxMemSize", "h2_stream_max_mem_size", h2_mem, _SV),
    )
}

#: Directives with their own handler: lower-case name -> (name, method, contexts).
HANDLERS: dict[str, tuple[str, str, frozenset[Ctx]]] = {
    spec[0].lower(): spec
    for spec in (
        ("Listen", "_listen", _S),
        ("Require", "_require", _AUTH | {Ctx.REQUIRE}),
        ("AuthMerging", "_auth_merging", _AUTH),
        ("ServerAlias", "_server_alias", _V),
        ("ProxyPass", "_proxy_pass", _SVL),
        ("ProxyPassMatch", "_proxy_pass_match", _SVL),
        ("ProxyPassReverse", "_proxy_pass_reverse", _SVL),
        ("ProxyPassReverseCookiePath", "_cookie_path", _SVL),
        ("ProxyPassReverseCookieDomain", "_cookie_domain", _SVL),
        ("ProxyRequests", "_proxy_requests", _SV),
        ("BalancerMember", "_balancer_member", _SVP),
        ("ProxySet", "_proxy_set", _SVP),
        ("MaxTunnelThreads", "_max_tunnel_threads", _S),
        ("TunnelBufferLimit", "_tunnel_buffer_limit", _S),
        ("PidFile", "_pid_file", _S),
        ("GracefulShutdownTimeout", "_graceful_shutdown_timeout", _S),
        ("RequestReadTimeout", "_request_read_timeout", _SV),
        ("SSLEngine", "_ssl_engine", _SV),
        ("SSLProtocol", "ssl_protocol", _SV),
        ("LogLevel", "log_level", _SV),
        ("ErrorLog", "_error_log", _SV),
        ("LogFormat", "_log_format", _SV),
        ("CustomLog", "_custom_log", _SV),
        ("RewriteCond", "_rewrite_cond", _SVL),
        ("RewriteRule", "_rewrite_rule", _SVL),
        ("RewriteOptions", "_rewrite_options", _SVL),
        ("Header", "_header", _SVL),
        ("RequestHeader", "_request_header", _SVL),
        ("SetEnv", "_set_env", _SVL),
        ("UnsetEnv", "_unset_env", _SVL),
        ("PassEnv", "_pass_env", _SVL),
        ("SetEnvIf", "_set_env_if", _SVL),
        ("SetEnvIfNoCase", "_set_env_if_nocase", _SVL),
        ("BrowserMatch", "_browser_match", _SVL),
        ("BrowserMatchNoCase", "_browser_match_nocase", _SVL),
        ("TransferLog", "_transfer_log", _SV),
        ("RewriteBase", "_rewrite_base", _SVL),
        ("RemoteIPProxyProtocol", "_remoteip_proxy_protocol", _SV),
        ("RemoteIPProxyProtocolExceptions", "_remoteip_proxy_protocol_exceptions", _SV),
        ("RemoteIPHeader", "_remoteip_header", _SV),
        ("RemoteIPProxiesHeader", "_remoteip_proxies_header", _SV),
        ("RemoteIPInternalProxy", "_remoteip_internal_proxy", _SV),
        ("RemoteIPTrustedProxy", "_remoteip_trusted_proxy", _SV),
        ("RemoteIPInternalProxyList", "_remoteip_internal_proxy_list", _SV),
        ("RemoteIPTrustedProxyList", "_remoteip_trusted_proxy_list", _SV),
        ("Include", "_include", _ALL),
        ("IncludeOptional", "_include_optional", _ALL),
        # core (config/corehooks.py)
        ("Define", "_define", _SV),
        ("UnDefine", "_undefine", _SV),
        ("ServerName", "_server_name", _SV),
        ("Protocols", "_protocols", _SV),
        ("ProtocolsHonorOrder", "_protocols_honor_order", _SV),
        ("HostnameLookups", "_hostname_lookups", _SVL),
        ("UseCanonicalName", "_use_canonical_name", _SVL),
        ("TraceEnable", "_trace_enable", _SV),
        ("ErrorDocument", "_error_document", _SVL),
        # mod_ssl (config/tlshooks.py)
        ("SSLProxyVerify", "_ssl_proxy_verify", _SV),
        ("SSLProxyProtocol", "_ssl_proxy_protocol", _SV),
        ("SSLCipherSuite", "_ssl_cipher_suite", _SV),
        ("SSLProxyCipherSuite", "_ssl_proxy_cipher_suite", _SV),
        ("SSLVerifyClient", "_ssl_verify_client", _SV),
        ("SSLVerifyDepth", "_ssl_verify_depth", _SV),
        ("SSLCompression", "_ssl_compression", _SV),
        ("SSLOpenSSLConfCmd", "_ssl_openssl_conf_cmd", _SV),
        # mod_alias (config/aliashooks.py)
        ("Redirect", "_redirect", _SVL),
        ("RedirectMatch", "_redirect_match", _SVL),
        ("RedirectPermanent", "_redirect_permanent", _SVL),
        ("RedirectTemp", "_redirect_temp", _SVL),
        ("ExtendedStatus", "_extended_status", _S),
        ("TunnelControlSocket", "_tunnel_control_socket", _S),
        ("TunnelLoopLagLimit", "_tunnel_loop_lag_limit", _S),
    )
}

#: Sections: lower-case name -> (name, contexts).
SECTIONS: dict[str, tuple[str, frozenset[Ctx]]] = {
    "virtualhost": ("VirtualHost", _S),
    "location": ("Location", _SV),
    "locationmatch": ("LocationMatch", _SV),
    "proxy": ("Proxy", _SV),
    "proxymatch": ("ProxyMatch", _SV),
    "ifmodule": ("IfModule", _ALL),
    "ifdefine": ("IfDefine", _ALL),
    "ifversion": ("IfVersion", _ALL),
    "iffile": ("IfFile", _ALL),
    **{k.lower(): (k, _AUTH | {Ctx.REQUIRE}) for k in ("RequireAll", "RequireAny", "RequireNone")},
}
