"""What is wrong with a script's #! line, in words.

A script whose interpreter is missing cannot start, and the kernel says
only "No such file or directory" (ENOENT), which names nothing: the script
is there, its interpreter is not. These functions read the first line of a
file, as the kernel does (Linux: at most 256 bytes; the interpreter is the
first word after #!, the rest of the line one argument) and say what stops
it running. They are used at start-up (COMMAND; the scripts directly in
--dir and --cgidir) and when a spawn fails, never on a connection's way in.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import List, Optional, Tuple

HEAD_SIZE = 256  # what Linux reads of a script for its #! line (BINPRM_BUF_SIZE)
SCAN_LIMIT = 1000  # most directory entries looked at by scan_directory()

CARRIAGE_RETURN = "the #! line ends in a carriage return (CRLF line endings?)"
NO_INTERPRETER = "the #! line names no interpreter"
TOO_LONG = f"the #! line's interpreter name is longer than {HEAD_SIZE - 3} bytes"

# The spawn errors a bad #! line causes: the interpreter is missing (ENOENT),
# not a program (ENOEXEC), or not executable (EACCES).
SCRIPT_ERRNOS = (errno.ENOENT, errno.ENOEXEC, errno.EACCES)


def interpreter_of(head: bytes) -> Tuple[Optional[bytes], Optional[str]]:
    """The first bytes of a file -> (interpreter, problem found in the line
    itself). (None, None) if the file does not start with #!."""
    if not head.startswith(b"#!"):
        return None, None
    newline = head.find(b"\n")
    line = head[2:] if newline < 0 else head[2:newline]
    # The kernel drops trailing spaces and tabs, but not a carriage return.
    if line.rstrip(b" \t").endswith(b"\r"):
        return None, CARRIAGE_RETURN
    # Only spaces and tabs separate the interpreter from its argument, as in the kernel.
    words = line.strip(b" \t").replace(b"\t", b" ").split(b" ", 1)
    if not words[0]:
        return None, NO_INTERPRETER
    interpreter = words[0]
    if newline < 0 and len(head) >= HEAD_SIZE and len(words) == 1 and not line.endswith((b" ", b"\t")):
        return None, TOO_LONG  # the kernel refuses a name it cannot see the end of
    return interpreter, None


def shown(name: bytes) -> str:
    """A file name for a log line or close reason: invalid UTF-8 and control
    characters as \\xNN escapes."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text)


def interpreter_problem(head: bytes) -> Optional[str]:
    """What stops the kernel running a file that starts with these bytes,
    judged by its #! line and the interpreter it names; None if nothing
    (including: no #! line at all). The interpreter's own #! line is not
    followed, nor the program `/usr/bin/env` is asked for."""
    interpreter, problem = interpreter_of(head)
    if interpreter is None:
        return problem
    try:
        st = os.stat(interpreter)
    except FileNotFoundError:
        return f"#! interpreter {shown(interpreter)} not found"
    except NotADirectoryError:
        return f"#! interpreter {shown(interpreter)} not found (a part of its path is not a directory)"
    except OSError as e:
        return f"#! interpreter {shown(interpreter)} cannot be reached: {lowered(e)}"
    if not stat.S_ISREG(st.st_mode) or not os.access(interpreter, os.X_OK):
        return f"#! interpreter {shown(interpreter)} is not an executable file"
    return None


def read_head(path: str) -> bytes:
    """The first HEAD_SIZE bytes of path (b"" if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, HEAD_SIZE)
    except OSError:
        return b""
    finally:
        os.close(fd)


def script_problem(path: str) -> Optional[str]:
    """What is wrong with the #! line of the file at path, or None."""
    return interpreter_problem(read_head(path))


def spawn_failure(path: str, error: OSError) -> str:
    """Why a program could not be started, in words: the #! line's problem
    when the error is one a bad #! line causes and there is one; else the
    system's words for the error."""
    if error.errno in SCRIPT_ERRNOS:
        head = read_head(path)
        problem = interpreter_problem(head)
        if problem:
            return problem
        if error.errno == errno.ENOEXEC and not head.startswith(b"#!"):
            return "exec format error (no #! line, and not a program this system runs)"
    return error.strerror or str(error)


def lowered(error: OSError) -> str:
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def scan_directory(root: str, limit: int = SCAN_LIMIT) -> Tuple[List[Tuple[str, str]], bool]:
    """(name, problem) for each executable file directly in root whose #!
    line stops it running, and whether every entry was looked at. Bounded:
    at most `limit` entries are looked at, so a huge directory costs
    start-up little; the rest are not checked (a failed spawn still says
    what is wrong). Dot-files are skipped: they are never served."""
    found = []
    complete = True
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= limit:
                    complete = False
                    break
                if entry.name.startswith("."):
                    continue
                try:
                    if not entry.is_file() or not os.access(entry.path, os.X_OK):
                        continue
                except OSError:
                    continue
                problem = script_problem(entry.path)
                if problem:
                    found.append((entry.name, problem))
    except OSError:
        pass
    return sorted(found), complete
