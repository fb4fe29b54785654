"""``meta1 lookup``, ``meta1 greyprint``, ``meta1 greyrm``: the policy from the command line.

    meta1 lookup [-f FILE] TAG KEY     every key tried for KEY, in order, with the map that
                                       answered and what it said (the teaching and
                                       debugging view of the lookup orders, spec/maps.md)
    meta1 greyprint [-f FILE]          the greylisting database, one triplet per line
    meta1 greyrm [-f FILE] [--network N] [--client IP] [--sender S] [--recipient R]
                                       remove the triplets matching every criterion given

``lookup`` takes a tag (``cltaddr:``, ``cltname:``, ``from:``, ``to:``,
``protectedrcpt:``, ``smtps_session_conf:``, ``smtpc_rcpt_conf:``, ``icm:``,
``smtpc_session_conf:`` …) — the trailing colon may be left out — and looks KEY up in the
map the daemons read it from: qmgr's ``config_map`` for the tags qmgr reads
(``icm: icr: oci: ocm: ocr: oct: smtpc_session_conf:``, D-POL-28), the access map for the
others; or one of ``local_user_map``, ``aliases``, ``mailertable`` to look KEY up in that
map the way routing does. Keys come from
:mod:`meta1.maps.keys`: IP keys for the IP tags, domain keys for ``cltname:`` and the
mailertable, address keys for the others. Exit 0 when a key was found, 1 when none
was, 75 when a lookup failed (TEMP/PERM).
"""

from __future__ import annotations

import argparse
import os
import sys

from meta1.maps.base import LookupRequest, Status
from meta1.maps.keys import address_keys, domain_keys, ip_keys, local_part_keys

IP_TAGS = {"cltaddr", "icm", "icr", "oci", "ocm", "ocr", "oct", "smtps_session_conf", "smtpc_session_conf"}
NAME_TAGS = {"cltname", "cltresolve"}
QMGR_TAGS = {"icm", "icr", "oci", "ocm", "ocr", "oct", "smtpc_session_conf"}     # in qmgr's config_map
MAP_USES = {"local_user_map", "aliases", "mailertable"}


def keys_for(tag: str, key: str, flags: frozenset[str] = frozenset()) -> list[str]:
    """The keys tried, in order, for ``key`` under ``tag`` (without its colon)."""
    if tag in IP_TAGS:
        return [f"{tag}:{k}" for k in ip_keys(key)]
    if tag == "cltresolve":
        return [f"{tag}:{key.lower()}"]
    if tag in NAME_TAGS:
        return [f"{tag}:{k}" for k in domain_keys(key)]
    if tag == "mailertable":
        return (address_keys(key) if "full_address" in flags and "@" in key else []) + \
            domain_keys(key.rpartition("@")[2]) + ["."]
    if tag in ("local_user_map", "aliases"):
        return local_part_keys(key.rpartition("@")[0] or key) if "localpart" in flags else address_keys(key)
    return [f"{tag}:{k}" for k in address_keys(key)]


def lookup(args, config) -> int:
    from meta1.eventloop import EventLoop
    from meta1.maps.driver import BlockingDriver, open_maps
    tag = args.tag.rstrip(":").lower()
    smar = config.smar
    flags: frozenset[str] = frozenset()
    if tag in MAP_USES:
        use = smar.sections.get(tag)
        if use is None:
            print(f"meta1 lookup: no {tag} in {config.filename}", file=sys.stderr)
            return 1
        map_name = use.values["name"]
        flags = frozenset(f for f, on in (use.values.get("flags") or {}).items() if on)
    elif tag in QMGR_TAGS:
        map_name = config.qmgr.config_map if isinstance(config.qmgr.config_map, str) else None
    else:
        map_name = smar.access_map.values["name"] if smar.access_map is not None else None
    if map_name is None:
        print(f"meta1 lookup: no map for {tag}: in {config.filename}", file=sys.stderr)
        return 1
    loop = EventLoop()
    os.chdir(config.queue_directory) if os.path.isdir(config.queue_directory) else None
    driver = BlockingDriver(open_maps(config, loop, strict=False), loop)
    status = 1
    try:
        for key in keys_for(tag, args.key, flags):
            result = driver.lookup(LookupRequest(map_name, key))
            shown = {Status.FOUND: f"found: {result.value}", Status.NOTFOUND: "not found",
                     Status.NOMORE: "not found, no more keys (NOMORE)"}.get(
                result.status, f"{result.status.value}: {result.reason}")
            print(f"{map_name}: {key}: {shown}")
            if result.status is Status.FOUND:
                return _show_parsed(tag, result.value)
            if result.status is Status.NOMORE:
                return 1
            if result.failed:
                status = 75
                break
    finally:
        loop.close()
    return status


def _show_parsed(tag: str, text: str) -> int:
    """For a ``*_session_conf:`` entry, what the daemon makes of its text: the options it
    sets, or the mistake (exit 75: the daemon treats a bad value as a failed lookup and
    answers 4xx, B33) — so a bad entry is found here rather than in a log."""
    from dataclasses import asdict
    from meta1.policy.sessionconf import SessionConfError, parse_session_conf, parse_smtpc_session_conf
    parse = {"smtps_session_conf": parse_session_conf, "smtpc_session_conf": parse_smtpc_session_conf}.get(tag)
    if parse is None:
        return 0
    try:
        conf = parse(text)
    except SessionConfError as error:
        print(f"  invalid: {error}")
        return 75
    sets = [f"{name} = {', '.join(value) if isinstance(value, tuple) else value}"
            for name, value in asdict(conf).items() if value not in (None, ())]
    print(f"  sets: {', '.join(sets) or 'nothing'}")
    return 0


def _store(config):
    from meta1.smar.greylistdb import SqliteGreylistStore
    greylisting = config.smar.greylisting
    if greylisting is None:
        print(f"meta1: no greylisting section in {config.filename}", file=sys.stderr)
        return None
    path = os.path.join(config.queue_directory, str(greylisting.database))
    if not os.path.exists(path):
        print(f"meta1: no greylisting database yet ({path})", file=sys.stderr)
        return None
    return SqliteGreylistStore(path)


def greyprint(args, config) -> int:
    from meta1.policy.greylist import greyprint as lines_of
    store = _store(config)
    if store is None:
        return 1
    try:
        for line in lines_of(store):
            print(line)
    finally:
        store.close()
    return 0


def greyrm(args, config) -> int:
    from meta1.policy.greylist import GreylistSettings, greyrm as remove
    store = _store(config)
    if store is None:
        return 1
    try:
        removed = remove(store, network=args.network, client=args.client, sender=args.sender,
                         recipient=args.recipient, settings=GreylistSettings.from_config(config.smar.greylisting))
    except ValueError as error:
        print(f"meta1 greyrm: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()
    for key in removed:
        print(f"removed {key.network} <{key.sender}> <{key.recipient}>")
    print(f"{len(removed)} triplet{'s' if len(removed) != 1 else ''} removed")
    return 0


def arguments(commands: dict[str, argparse.ArgumentParser]) -> None:
    commands["lookup"].add_argument("tag", metavar="TAG", help="an access-map tag (cltaddr:, from:, …) "
                                    "or local_user_map, aliases, mailertable")
    commands["lookup"].add_argument("key", metavar="KEY")
    for option in ("network", "client", "sender", "recipient"):
        commands["greyrm"].add_argument(f"--{option}")
