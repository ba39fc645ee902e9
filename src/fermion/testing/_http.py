"""One-off HTTP calls for tests and benchmarks, without httpx's cost per call: its module functions
(``httpx.get``) and each new client build a TLS context from the CA bundle, 60 ms of CPU, which a
polling loop or a matrix of a thousand calls pays each time."""

from __future__ import annotations

import httpx

# the CA bundle read once; a client given it verifies HTTPS as httpx's default does
TLS = httpx.create_ssl_context()

# no connection is kept: each call is a fresh one, as with the module functions (a test that kills
# a server must not meet a pooled connection to it)
web = httpx.Client(timeout=5, verify=TLS, limits=httpx.Limits(max_keepalive_connections=0))
