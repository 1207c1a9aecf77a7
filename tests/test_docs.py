"""The documentation matches the program: --help, the man page and the README
list the same options; the man page renders without warnings; CI runs the
README's test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from support.servers import ROOT

MAN = ROOT / "man" / "wsexec.1"
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def help_options() -> set:
    """The --name of every entry in the Options section of --help."""
    out = subprocess.run(
        [sys.executable, "-m", "wsexec", "--help"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    section = out.split("\nOptions:\n", 1)[1]
    names = set()
    for line in section.splitlines():
        # An entry starts with two spaces and a dash; its help text follows
        # after a gap of two or more spaces, continuation lines are indented deeper.
        if re.match(r"  -", line):
            names.update(OPTION.findall(re.split(r"\s{2,}", line.strip())[0]))
    return names


def man_section(name: str) -> str:
    text = MAN.read_text()
    match = re.search(rf"^\.SH {re.escape(name)}\n(.*?)(?=^\.SH |\Z)", text, re.S | re.M)
    assert match, f"no .SH {name} in {MAN}"
    return match.group(1)


def man_options() -> set:
    """Every `.TP` item of OPTIONS whose tag line is `.B \\-\\-name ...`."""
    lines = man_section("OPTIONS").splitlines()
    names = set()
    for tp, tag in zip(lines, lines[1:]):
        if tp == ".TP":
            match = re.match(r"\.B \\-\\-((?:[a-z0-9]|\\-)+)", tag)
            assert match, f"a .TP in OPTIONS not followed by '.B \\-\\-name': {tag!r}"
            names.add("--" + match.group(1).replace("\\-", "-"))
    return names


def readme_options() -> set:
    """The first cell of every row of the README's Options table."""
    section = re.search(r"^## Options\n(.*?)(?=^## |\Z)", README.read_text(), re.S | re.M)
    assert section, "no '## Options' section in README.md"
    names = set()
    for line in section.group(1).splitlines():
        if line.startswith("| `-"):
            names.update(OPTION.findall(line.split("|")[1]))
    return names


def test_help_man_and_readme_list_the_same_options():
    from_help = help_options()
    assert {"--port", "--dir", "--version", "--help"} <= from_help
    assert man_options() == from_help, "man/wsexec.1 OPTIONS differs from --help"
    assert readme_options() == from_help, "README.md option table differs from --help"


def test_man_page_has_the_required_sections():
    text = MAN.read_text()
    assert text.startswith(".TH WSEXEC 1 ")
    sections = re.findall(r'^\.SH "?([A-Z ]+?)"?$', text, re.M)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "LIFECYCLE",
                 "CLOSE CODES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert name in sections, f"man page lacks .SH {name}"
    for code in ("1000", "1001", "1002", "1007", "1009", "1011"):
        assert f".B {code}\n" in man_section('"CLOSE CODES"'), code
    for status in "01234":
        assert f".B {status}\n" in man_section('"EXIT STATUS"'), status
    # The text-mode policy for stdout lines that are not UTF-8.
    assert "not valid UTF\\-8 is sent as a binary message" in " ".join(text.split())


def test_man_page_renders_without_warnings_in_groff():
    if not shutil.which("groff"):
        pytest.fail("groff is not installed (apt-get install groff-base)")
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_man_page_renders_with_man():
    if not shutil.which("man"):
        pytest.fail("man is not installed (apt-get install man-db)")
    done = subprocess.run(["man", "--warnings", "-l", str(MAN)], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "LIFECYCLE" in done.stdout and "--maxmessage" in done.stdout


def indented_commands(text: str) -> list:
    """The first line of each indented code block outside fenced blocks."""
    commands, fenced, previous = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("    ") and not previous.strip():
            commands.append(line[4:])
        previous = line
    return commands


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    pytest_lines = [line for line in text.splitlines() if line.startswith("    ") and "python3 -m pytest" in line]
    assert len(pytest_lines) == 1, pytest_lines
    commands = indented_commands(text)
    assert commands[0].startswith("pip install . && wsexec --port 8080 examples/")
    assert commands[1] == pytest_lines[0][4:], "the test command must be the second indented command"

    script = CI.read_text()
    assert 'bash -c "$cmd"' in script
    expression = re.search(r"sed -n '([^']*)' README\.md", script)
    assert expression, "no sed extraction in .ci/run"
    extracted = subprocess.run(["sed", "-n", expression.group(1), str(README)],
                               capture_output=True, text=True, timeout=30, check=True).stdout
    assert extracted.splitlines()[0] == commands[1]
