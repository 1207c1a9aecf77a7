#!/usr/bin/env python3
"""A CGI/1.1 script: the name from the query string (GET) or a form body (POST)."""
import html
import os
import sys
from urllib.parse import parse_qs

if os.environ["REQUEST_METHOD"] == "POST":
    length = int(os.environ.get("CONTENT_LENGTH") or 0)
    form = parse_qs(sys.stdin.read(length))
else:
    form = parse_qs(os.environ["QUERY_STRING"])
name = form.get("name", ["stranger"])[0]

# The header, a blank line, then the body (RFC 3875 section 6).
print("Content-Type: text/plain; charset=utf-8")
print()
print(f"Hello, {name}, from CGI!")
print(f"PATH_INFO={os.environ['PATH_INFO']}")
