"""Listeners and what comes before HTTP: sockets, TLS, the PROXY header, trusted proxies."""
