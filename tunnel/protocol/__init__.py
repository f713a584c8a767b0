"""Sans-IO protocol work: bytes and configuration in, decisions and bytes out.

Request heads (`request`, `heads`), upgrade checks (`upgrade`), the backend handshake
(`backend`), the proxy's own answers (`responses`), routing (`routing`), balancing and
worker health (`balancer`, `health`), and the one h11 adapter (`h11compat`). Nothing here
imports socket, select, selectors, ssl, threading or time (a test enforces it).
"""
