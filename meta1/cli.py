"""The ``meta1`` command.

    meta1 -V                 version
    meta1 -VV                version and the full OpenSSL version string (as MeTA1's
                             ``smtps -VV`` prints since 2014-06-05)
    meta1 check [-f FILE]    validate a configuration: "configuration OK" and exit 0, or
                             every error as FILE:LINE:COL: message and exit 1
    meta1 config [-f FILE]   print the effective configuration, every default filled in,
                             in the configuration language itself
    meta1 qmgr [-f FILE]     run the queue manager in the foreground
    meta1 smtps [-f FILE] [--name NAME] [--index N]
                             run an SMTP server in the foreground (qmgr must run)
    meta1 smar [-f FILE]     run the address resolver (DNS) in the foreground
    meta1 smtpc [-f FILE]    run the SMTP/LMTP client in the foreground (qmgr must run)
    meta1 lmtpd [-f FILE]    run the local delivery agent (LMTP into Maildirs) in the
                             foreground; the configuration needs an lmtpd section
    meta1 mailq [-f FILE] [--json]
                             list the queued messages: id, arrival, size, sender, and per
                             recipient its state, attempts, next try and last reply
    meta1 start [-f FILE] [--foreground]
                             start the MTA: mcp, which starts and watches the daemons;
                             without --foreground it detaches once they are ready
    meta1 stop [-f FILE]     stop the MTA (mcp stops the daemons in order)
    meta1 status [-f FILE] [--json]
                             mcp and each daemon: state, pid, uptime, restarts; queue counts
    meta1 createmap [-f FILE] MAPNAME | SOURCE OUTPUT | --dump MAPFILE
                             build a hash map's file from its text source, atomically
                             (spec/maps.md); --dump prints a map file as text
    meta1 accounts [--create]
                             MeTA1's accounts, which mcp uses as root; --create adds them
    meta1 trace [-f FILE] [--log PATH] ID
                             the life of a message across the daemons, from the log; with
                             trace_file, then its path through the state machines
    meta1 lookup [-f FILE] TAG KEY
                             every key tried for KEY under TAG, the map that answered, the answer
    meta1 greyprint [-f FILE] / greyrm [-f FILE] [--network N] [--client IP] [--sender S] [--recipient R]
                             the greylisting database: list it, remove triplets
    meta1 qmgrctl [-f FILE] flush [DOMAIN] | hold ID | release ID | delete ID
                             command the running qmgr: retry deferred mail now (all, or
                             for one destination), hold, release or delete a message;
                             exit 1 when qmgr refuses (e.g. unknown id), 75 when qmgr
                             is not running

Without ``-f`` the commands use the built-in default configuration shipped in the
package (``default.conf``; run as root, ``default-root.conf``: the queue in
/var/spool/meta1, where the daemons' own users can reach it).
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
EXIT_REFUSED = 1  # qmgrctl: qmgr refused the command


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
    commands = {}
    for name, help_text in (("check", "validate a configuration file"),
                            ("config", "print the effective configuration"),
                            ("qmgr", "run the queue manager in the foreground"),
                            ("smtps", "run an SMTP server in the foreground"),
                            ("smar", "run the address resolver in the foreground"),
                            ("smtpc", "run the SMTP/LMTP client in the foreground"),
                            ("lmtpd", "run the local delivery agent in the foreground"),
                            ("mailq", "list the queued messages"),
                            ("qmgrctl", "command the running queue manager"),
                            ("start", "start the MTA (mcp and the daemons)"),
                            ("stop", "stop the MTA"),
                            ("status", "show the state of the MTA and its queue"),
                            ("trace", "show the life of one message from the log"),
                            ("lookup", "show the keys tried for a map lookup, and the answer"),
                            ("greyprint", "list the greylisting database"),
                            ("greyrm", "remove triplets from the greylisting database")):
        p = commands[name] = sub.add_parser(name, help=help_text)
        p.add_argument("-f", dest="file", metavar="FILE",
                       help="configuration file (default: the built-in configuration)")
    createmap = sub.add_parser("createmap", help="build a hash map file from its text source")
    createmap.add_argument("-f", dest="file", metavar="FILE",
                           help="configuration file declaring MAPNAME (default: the built-in configuration)")
    from meta1.maps import createmap as createmap_command
    createmap_command.arguments(createmap)
    commands["smtps"].add_argument("--name", default=None,
                                   help="which smtps section (default: the unnamed one)")
    commands["smtps"].add_argument("--index", type=int, default=0, choices=range(256),
                                   metavar="N", help="process index in ids (0-255)")
    commands["mailq"].add_argument("--json", action="store_true", help="JSON output")
    commands["status"].add_argument("--json", action="store_true", help="JSON output")
    from meta1.tools import policycli, trace
    trace.arguments(commands["trace"])
    policycli.arguments(commands)
    commands["start"].add_argument("--foreground", action="store_true",
                                   help="stay in the foreground, logging to standard error")
    sub.add_parser("accounts", help="list (or --create) MeTA1's accounts").add_argument(
        "--create", action="store_true", help="add the missing accounts (root)")
    actions = commands["qmgrctl"].add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("flush", help="retry deferred recipients now").add_argument(
        "argument", nargs="?", metavar="DOMAIN", help="only those for this destination")
    for action, help_text in (("hold", "hold a message"), ("release", "release a held message"),
                              ("delete", "delete a message (no DSN)")):
        actions.add_parser(action, help=help_text).add_argument("argument", metavar="ID", help="queue id")
    return parser


def load(file: str | None) -> Config:
    home = os.path.expanduser("~")
    if file is None:
        return load_default(home, root=os.geteuid() == 0)
    return load_file(file, home)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text(args.version))
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    if args.command == "accounts":
        from meta1.mcp.commands import accounts
        return accounts(args.create)
    if args.command == "createmap":
        from meta1.maps import createmap
        return createmap.main(args, load)
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
    elif args.command == "config":
        sys.stdout.write(f"# effective configuration of {config.filename}\n")
        sys.stdout.write(format_document(effective_document(config)))
    elif args.command == "mailq":
        from meta1.queue.layout import QueueLayout
        from meta1.queue.mailq import format_json, format_text, list_queue
        from meta1.queue.recordfile import OlderFormat
        problems: list[str] = []
        try:
            messages = list_queue(QueueLayout(config.queue_directory, config.cdb_base_directory), problems)
        except OlderFormat as error:
            print(f"meta1 mailq: {error}", file=sys.stderr)
            return 1
        for problem in problems:
            print(f"meta1 mailq: {problem}", file=sys.stderr)
        sys.stdout.write((format_json if args.json else format_text)(messages))
    elif args.command == "qmgrctl":
        return qmgrctl(args.action, args.argument, config)
    elif args.command in ("lookup", "greyprint", "greyrm"):
        from meta1.tools import policycli
        return getattr(policycli, args.command)(args, config)
    elif args.command == "trace":
        from meta1.mcp.commands import log_file_of
        from meta1.runtime.process import trace_file_path
        from meta1.tools import trace
        return trace.main(args.id, args.log or [log_file_of(config)], trace_file_path(config))
    elif args.command in ("start", "stop", "status"):
        from meta1.mcp import commands
        if args.command == "start":
            return commands.start(config, args.file, foreground=args.foreground, load=lambda: load(args.file))
        return commands.stop(config) if args.command == "stop" else commands.status(config, args.json)
    else:
        return run_daemon(args, config)
    return EXIT_OK


def qmgrctl(action: str, argument: str | None, config: Config) -> int:
    """Send one command to the running qmgr; its answer on stdout (0) or stderr (1);
    75 (EX_TEMPFAIL) when qmgr cannot be reached."""
    from meta1.qmgr.control import ControlError, control_socket, request_for, send_command
    from meta1.queue.layout import QueueLayout
    from meta1.runtime.process import EX_TEMPFAIL
    layout = QueueLayout(config.queue_directory, config.cdb_base_directory)
    try:
        result = send_command(control_socket(layout), request_for(action, argument))
    except ControlError as error:
        print(f"meta1 qmgrctl: {error}", file=sys.stderr)
        return EX_TEMPFAIL
    if not result.ok:
        print(f"meta1 qmgrctl: {result.text}", file=sys.stderr)
        return EXIT_REFUSED
    print(result.text)
    return EXIT_OK


def run_daemon(args, config: Config) -> int:
    """Run a daemon (qmgr, smtps, smar, smtpc, lmtpd) in the foreground until SIGTERM;
    sysexits-style status."""
    from meta1.runtime.process import (EX_CONFIG, EX_TEMPFAIL, exit_with_supervisor, limit_core_dumps,
                                       redirect_stderr, setup_logging, supervised, syslog_of)
    exit_with_supervisor()
    limit_core_dumps()
    if args.command == "smtps" and args.name not in config.smtps:
        print(f"meta1 smtps: no smtps section named {args.name!r} in {config.filename}",
              file=sys.stderr)
        return EX_CONFIG
    if args.command == "lmtpd" and config.lmtpd is None:
        print(f"meta1 lmtpd: no lmtpd section in {config.filename}", file=sys.stderr)
        return EX_CONFIG
    queue = config.queue_directory
    try:
        os.makedirs(queue, mode=0o750, exist_ok=True)
        os.chdir(queue)   # every daemon works in the queue directory (reference §1.3)
    except OSError as error:
        print(f"meta1 {args.command}: queue directory {queue}: {error.strerror}", file=sys.stderr)
        return EX_CONFIG
    if isinstance(config.log_file, str) and not supervised():   # mcp's children inherit it
        try:
            redirect_stderr(str(config.log_file))
        except OSError as error:
            print(f"meta1 {args.command}: log_file {config.log_file}: {error.strerror}", file=sys.stderr)
            return EX_CONFIG
    setup_logging(args.command, config.log_level, syslog_of(config))
    if args.command == "qmgr":
        from meta1.qmgr.daemon import QueueLocked, serve
        from meta1.queue.recordfile import OlderFormat
        try:
            return serve(config)
        except QueueLocked as error:
            print(f"meta1 qmgr: {error}", file=sys.stderr)
            return EX_TEMPFAIL
        except OlderFormat as error:
            print(f"meta1 qmgr: {error}", file=sys.stderr)
            return EX_CONFIG
    if args.command == "smar":
        from meta1.smar.daemon import serve as serve_smar
        from meta1.smar.nameservers import NoNameserverError
        try:
            return serve_smar(config)
        except NoNameserverError as error:
            print(f"meta1 smar: {error}", file=sys.stderr)
            return EX_CONFIG
    if args.command == "smtpc":
        from meta1.smtpc.daemon import serve as serve_smtpc
        return serve_smtpc(config)
    if args.command == "lmtpd":
        from meta1.lmtpd.daemon import serve as serve_lmtpd
        try:
            return serve_lmtpd(config)
        except OSError as error:      # the socket: another lmtpd listens, or no permission
            print(f"meta1 lmtpd: {error}", file=sys.stderr)
            return EX_TEMPFAIL
    from meta1.smtps.daemon import serve as serve_smtps
    try:
        return serve_smtps(config, args.name, args.index,
                           relog=lambda index: setup_logging(f"smtps.{index}", config.log_level,
                                                             syslog_of(config)))
    except OSError as error:
        print(f"meta1 smtps: {error}", file=sys.stderr)
        return EX_TEMPFAIL
