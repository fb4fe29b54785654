"""The ``meta1`` command.

    meta1 -V                 version
    meta1 -VV                version and the full OpenSSL version string (as MeTA1's
                             ``smtps -VV`` prints since 2014-06-05)
    meta1 check [-f FILE]    validate a configuration: "configuration OK" and exit 0, or
                             every error as FILE:LINE:COL: message and exit 1
    meta1 config [-f FILE]   print the effective configuration, every default filled in,
                             in the configuration language itself

Without ``-f`` both use the built-in default configuration shipped in the package.
This module is the I/O shell around :mod:`meta1.config`: it reads files, the home
directory and the environment, and writes to stdout/stderr; the loader itself does none
of that.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys

from meta1 import __version__
from meta1.config import ConfigError, Config, effective_document, load_default, load_file
from meta1.config.tree import format_document

EXIT_OK, EXIT_CONFIG_ERROR, EXIT_USAGE = 0, 1, 2


def version_text(verbosity: int) -> str:
    lines = [f"meta1 {__version__}"]
    if verbosity > 1:
        lines.append(f"Python {sys.version.split()[0]}")
        lines.append(ssl.OPENSSL_VERSION)
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meta1", description="meta1, a MeTA1 mail transfer agent in Python")
    parser.add_argument("-V", action="count", default=0, dest="version",
                        help="print the version (-VV: also the OpenSSL version)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in (("check", "validate a configuration file"),
                            ("config", "print the effective configuration")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-f", dest="file", metavar="FILE",
                       help="configuration file (default: the built-in configuration)")
    return parser


def load(file: str | None) -> Config:
    home = os.path.expanduser("~")
    return load_default(home) if file is None else load_file(file, home)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text(args.version))
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        config = load(args.file)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        count = len(exc.diagnostics)
        print(f"{count} error{'s' if count != 1 else ''} in the configuration", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "check":
        print("configuration OK")
    else:
        sys.stdout.write(f"# effective configuration of {config.filename}\n")
        sys.stdout.write(format_document(effective_document(config)))
    return EXIT_OK
