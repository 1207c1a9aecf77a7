"""Which program a request runs: the COMMAND, or a script found under --dir."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import unquote


@dataclass(frozen=True)
class Route:
    program: str  # absolute path of the executable
    script_name: str  # URL path of the script ("" in command mode)
    path_info: str  # the rest of the URL path, decoded
    path_translated: str


def decode_path(path: str) -> Optional[Tuple[str, ...]]:
    """Split a percent-encoded URL path into decoded segments.

    None for anything that could name a file other than the one it seems to:
    encoded '/' or '\\', a backslash, NUL, '.', '..' or any dot-file segment
    (checked after decoding, so '%2e%2e' is caught too).
    """
    if not path.startswith("/"):
        return None
    segments = []
    for raw in path[1:].split("/"):
        if not raw:
            continue
        segment = unquote(raw, errors="surrogateescape")
        if "/" in segment or "\\" in segment or "\0" in segment or segment.startswith("."):
            return None
        segments.append(segment)
    return tuple(segments)


def route_command(command_path: str, url_path: str) -> Route:
    """Command mode: SCRIPT_NAME is '/', PATH_INFO the whole decoded path (websocketd)."""
    path_info = unquote(url_path, errors="surrogateescape")
    return Route(command_path, "/", path_info, path_info)


def route_dir(root: str, url_path: str) -> Optional[Route]:
    """--dir mode: the first segment that is an executable file is the script,
    the rest is PATH_INFO. None (answer 404) for anything else, including a
    path whose real location is outside root (a symlink that leaves it)."""
    segments = decode_path(url_path)
    if not segments:
        return None
    current = root
    for i, segment in enumerate(segments):
        current = os.path.join(current, segment)
        real = os.path.realpath(current)
        if real != root and not real.startswith(root + os.sep):
            return None
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode) or not os.access(real, os.X_OK):
            return None
        rest = segments[i + 1 :]
        path_info = "/" + "/".join(rest) if rest else ""
        if url_path.endswith("/") and not path_info.endswith("/"):
            path_info += "/"  # '/script/' keeps its slash: PATH_INFO '/', as websocketd and Apache give
        script_name = "/" + "/".join(segments[: i + 1])
        return Route(real, script_name, path_info, script_name + path_info)
    return None
