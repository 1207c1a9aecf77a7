"""wsexec: CGI for WebSockets."""

__version__ = "0.1.0"
