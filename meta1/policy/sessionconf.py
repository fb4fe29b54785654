"""smtps options per client: the ``smtps_session_conf:`` entry, read, checked and applied.

Responsibilities
    An access-map entry ``smtps_session_conf:<client> <text>`` (README 3.10.1, reference
    §2.6) gives the sessions of that client their own smtps options: ``<text>`` is
    configuration text in meta1's configuration language, e.g.
    ``flags = { dont_pipelining }; max_rcpts_per_transaction = 10; IO_timeout = 30s;``.
    This module

    * looks the entry up at connect (:func:`session_conf_steps`: the client's IP keys,
      then its validated name's domain keys — :func:`meta1.policy.access.smtps_session_conf`)
      and parses the value into a :class:`~meta1.ipc.records.SessionConf`, a lookup plan
      that smar runs over its maps like every other check;
    * says what the text may set: the options of
      :data:`meta1.config.schema.SMTPS_SESSION_CONF` (those that shape one SMTP dialogue,
      D-POL-26), checked by the same loader and types as the configuration file
      (:func:`meta1.config.load_section`), with the same positioned messages;
    * lays a parsed entry over an smtps section's values (:func:`session_values`), from
      which smtps makes the session's :class:`~meta1.smtps.session.Settings`.

Strategies
    * Parsed in smar, where the map is read: a bad value is found and logged next to the
      map's other failures, naming the map and the key, and smtps gets a checked, typed
      result in the connect verdict — no parser on smtps' accept path, no record more
      per session (D-POL-26).
    * All or nothing: a value with an unknown or disallowed option, a section, a bad value
      or a syntax error is a failure, and so is a lookup that answers TEMP, TIMEOUT or PERM
      (B33, D-POL-10). The session then gets ``421 4.3.0`` — it never runs with half of its
      settings or with the defaults its entry meant to change.
    * An entry overrides only what it names: an option it leaves out, and a flag it does
      not name, keep the smtps section's value (``flags = { dont_pipelining }`` does not
      turn 8BITMIME off again on a server that offers it).
    * The same text is parsed once: parsing is pure, so results are kept by text (a few
      hundred entries at most; an access map names networks, not every client).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Mapping

from meta1.config import ConfigError, load_section
from meta1.config.schema import SMTPS_SESSION_CONF
from meta1.ipc.records import SessionConf
from meta1.policy.access import ConfResult, smtps_session_conf
from meta1.policy.plan import Steps

#: The SessionConf fields that carry an option's value (the rest are the flags).
NUMBER_OPTIONS = tuple(f.name for f in fields(SessionConf) if f.name not in ("flags_on", "flags_off"))
#: How many parsed texts are kept.
PARSED_CACHE = 256


class SessionConfError(ValueError):
    """A value that is no valid session configuration; the message lists every mistake,
    each with its line and column in the value."""


@dataclass(frozen=True)
class SessionConfResult(ConfResult):
    """The connect stage's configuration lookup: the entry (``key``, ``text``) and the
    options it sets (``conf``; None: no entry), or ``failure`` (a failed lookup or a bad
    value), which closes the session with 421 (B33)."""

    conf: SessionConf | None = None


def session_conf_steps(map_name: str | None, client_addr: str, client_name: str = "") -> Steps[SessionConfResult]:
    """Look up the client's ``smtps_session_conf:`` entry in ``map_name`` and parse it."""
    found = yield from smtps_session_conf(map_name, client_addr, client_name)
    if found.failed:
        return SessionConfResult(failure=f"map {map_name}: {found.failure}")
    if found.text is None:
        return SessionConfResult()
    try:
        conf = parse_session_conf(found.text)
    except SessionConfError as error:
        return SessionConfResult(found.key, found.text, failure=f"map {map_name}: {found.key}: {error}")
    return SessionConfResult(found.key, found.text, conf=conf)


def parse_session_conf(text: str) -> SessionConf:
    """The options ``text`` sets; :class:`SessionConfError` for anything else."""
    parsed = _parsed(text)
    if isinstance(parsed, str):
        raise SessionConfError(parsed)
    return parsed


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parsed(text: str) -> SessionConf | str:
    try:
        node = load_section(SMTPS_SESSION_CONF, text, "")
    except ConfigError as error:
        return "; ".join(f"{d.position}: {d.message}" for d in error.diagnostics)
    flags = node.values["flags"] if node.explicit("flags") else {}
    return SessionConf(flags_on=tuple(f for f, on in flags.items() if on),
                       flags_off=tuple(f for f, on in flags.items() if not on),
                       **{key: node.values[key] for key in NUMBER_OPTIONS if node.explicit(key)})


def session_values(values: Mapping[str, Any], conf: SessionConf) -> dict[str, Any]:
    """An smtps section's option values (by key) with the session's changes laid over."""
    changed = dict(values)
    changed.update((key, getattr(conf, key)) for key in NUMBER_OPTIONS if getattr(conf, key) is not None)
    changed["flags"] = {**values["flags"], **{f: True for f in conf.flags_on}, **{f: False for f in conf.flags_off}}
    return changed


__all__ = ["SessionConfError", "SessionConfResult", "session_conf_steps", "parse_session_conf", "session_values"]
