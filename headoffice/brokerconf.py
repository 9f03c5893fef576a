"""The office broker's configuration: the mosquitto config, its ACL and the receivers'
shared-subscription group.

Made from the package data in ``headoffice/broker/`` (``mosquitto.conf.template``,
``acl``) and the office root (:mod:`headoffice.officeroot`): one TLS listener, client
certificates required and their CN used as username, an ACL that confines a device to
``linetap/{CN}/…`` and grants each office receiver its topics. ``headoffice/broker/README.md``
explains why the share group's name is a secret.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headoffice.officeroot import (
    DEFAULT_OFFICE_CLIENT,
    DNS_NAME,
    CaLayout,
    CaMissing,
    EnrollError,
    check_name,
    office_clients,
)
from sealedrec.durable import replace_file, write_new_file
from sealedrec.protocol import MAX_CHUNK_SIZE, up_filter

__all__ = [
    "MAX_PACKET_SIZE",
    "office_share_filter",
    "office_share_group",
    "render_acl",
    "render_mosquitto_conf",
    "write_broker_config",
]

# A 4 MiB chunk plus the fixed header, topic, user properties and MQTT 5 properties.
MAX_PACKET_SIZE = MAX_CHUNK_SIZE + 64 * 1024
_SHARE_GROUP = re.compile(r"office-[0-9a-f]{32}")
_BROKER_FILES = Path(__file__).resolve().parent / "broker"


# --------------------------------------------------------------------------- share group


def office_share_group(root: Path) -> str:
    """The MQTT 5 shared-subscription group of the office receivers (made once, random).

    Mosquitto 2.0's ACL file does not apply to SUBSCRIBE: any client may join any share
    group, and the broker then hands that member its round-robin share of the uploads,
    which the ACL read check silently drops. A group name the devices cannot guess keeps
    them out. Stored in ``office/share-group`` (mode 0600).
    """
    layout = CaLayout(Path(root))
    path = layout.office / "share-group"
    if not path.exists():
        layout.office.mkdir(parents=True, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made concurrently: use that one
            write_new_file(path, f"office-{secrets.token_hex(16)}\n".encode(), 0o600)
    group = path.read_text(encoding="utf-8", errors="replace").strip()
    if not _SHARE_GROUP.fullmatch(group):
        raise EnrollError(
            f"{path}: not a share-group name (office-<32 hex digits>); delete it to make a new"
            " one, then restart every receiver"
        )
    return group


def office_share_filter(root: Path) -> str:
    """``$share/{group}/linetap/+/up/#``: what every office receiver subscribes to."""
    return f"$share/{office_share_group(root)}/{up_filter()}"


# --------------------------------------------------------------------------- broker config


def _template(name: str) -> str:
    path = _BROKER_FILES / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnrollError(
            f"{path}: broker template missing ({exc.strerror}); reinstall linetap (the"
            " headoffice/broker files must ship with the package)"
        ) from None


def _conf_path(path: Path, what: str) -> str:
    text = str(Path(path).resolve())
    if any(c.isspace() for c in text) or not text.isprintable():
        raise EnrollError(
            f"{what} {text!r}: mosquitto.conf cannot hold a path with spaces or control"
            " characters; move the office root to a plain path"
        )
    return text


def render_acl(
    office_names: Sequence[str] = (DEFAULT_OFFICE_CLIENT,),
    blocked_devices: Sequence[str] = (),
) -> str:
    """The broker ACL (``headoffice/broker/acl``) with one block per office receiver.

    ``blocked_devices`` get a ``topic deny #`` block: they can still complete
    TLS (there is no certificate revocation list yet) but can publish and receive
    nothing. Use it for a stolen or retired appliance, then reload the broker (SIGHUP).
    """
    text = _template("acl")
    marker = f"\nuser {DEFAULT_OFFICE_CLIENT}\n"
    head, found, block = text.partition(marker)
    if not found:
        raise EnrollError(
            f"{_BROKER_FILES / 'acl'}: no 'user {DEFAULT_OFFICE_CLIENT}' block to copy for"
            " each office receiver; restore the file from the linetap sources"
        )
    if not office_names:
        raise EnrollError("broker ACL: no office receiver names; issue_office_client first")
    out = [head, "\n"]
    for name in office_names:
        check_name(name, "office client name")
        out.append(f"user {name}\n{block}")
        if not block.endswith("\n"):
            out.append("\n")
    if blocked_devices:
        out.append("\n# Blocked devices: certificate still valid, every topic denied.\n")
        for device in blocked_devices:
            check_name(device, "blocked device id")
            if device in office_names:
                raise EnrollError(f"broker ACL: {device} is both an office receiver and blocked")
            out.append(f"user {device}\ntopic deny #\n")
    return "".join(out)


def render_mosquitto_conf(
    root: Path,
    port: int = 8883,
    *,
    persistence_location: Path,
    acl_file: Path | None = None,
    bind_address: str | None = None,
    max_packet_size: int = MAX_PACKET_SIZE,
    max_queued_messages: int = 1000,
    autosave_interval_s: int = 300,
    persistent_client_expiration: str = "14d",
    log_dest: str = "stderr",
    run_as_user: str | None = None,
) -> str:
    """mosquitto.conf for the office broker from ``headoffice/broker/mosquitto.conf.template``.

    One TLS listener on ``port`` (all addresses unless ``bind_address``), client
    certificates required and their CN used as username and client id, the ACL at
    ``acl_file`` (default ``root/broker/acl``, see :func:`write_broker_config`).
    ``run_as_user``: the user mosquitto drops to when started as root (mosquitto's
    default is ``mosquitto``); it must be able to read the key files and write
    ``persistence_location``.
    """
    layout = CaLayout(Path(root))
    if not 1 <= port <= 65535:
        raise EnrollError(f"broker port {port}: must be 1-65535")
    if max_packet_size < MAX_CHUNK_SIZE + 1024:
        raise EnrollError(
            f"max_packet_size {max_packet_size}: too small for a {MAX_CHUNK_SIZE}-byte chunk;"
            f" use at least {MAX_PACKET_SIZE}"
        )
    for path in (layout.broker_ca, layout.server_cert, layout.server_key):
        if not path.exists():
            raise CaMissing(f"{path}: missing; run init_ca({str(layout.root)!r}, ...) first")
    listener = str(port)
    if bind_address:
        try:
            ipaddress.ip_address(bind_address)
        except ValueError:
            if not DNS_NAME.fullmatch(bind_address):
                raise EnrollError(
                    f"bind address {bind_address!r}: not an IP address or host"
                ) from None
        listener += f" {bind_address}"
    if run_as_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}\$?", run_as_user):
        raise EnrollError(f"run_as_user {run_as_user!r}: not a user name")
    if not re.fullmatch(r"[0-9]+[hdwmy]?", persistent_client_expiration):
        raise EnrollError(
            f"persistent_client_expiration {persistent_client_expiration!r}: use e.g. '14d'"
        )
    if not re.fullmatch(r"(stderr|stdout|syslog|topic|dlt|none|file /\S+)", log_dest):
        raise EnrollError(
            f"log_dest {log_dest!r}: use stderr, stdout, syslog, none or 'file /path'"
        )
    values = {
        "listener": listener,
        "cafile": _conf_path(layout.broker_ca, "cafile"),
        "certfile": _conf_path(layout.server_cert, "certfile"),
        "keyfile": _conf_path(layout.server_key, "keyfile"),
        "acl_file": _conf_path(acl_file or layout.broker_acl, "acl_file"),
        "persistence_location": _conf_path(persistence_location, "persistence_location") + "/",
        "autosave_interval": str(int(autosave_interval_s)),
        "persistent_client_expiration": persistent_client_expiration,
        "max_packet_size": str(int(max_packet_size)),
        "max_queued_messages": str(int(max_queued_messages)),
        "log_dest": log_dest,
        "user_line": f"user {run_as_user}" if run_as_user else "# user mosquitto  (default)",
    }
    try:
        return string.Template(_template("mosquitto.conf.template")).substitute(values)
    except (KeyError, ValueError) as exc:
        raise EnrollError(
            f"{_BROKER_FILES / 'mosquitto.conf.template'}: bad placeholder {exc}; restore the"
            " file from the linetap sources"
        ) from None


def write_broker_config(
    root: Path,
    port: int = 8883,
    *,
    persistence_location: Path | None = None,
    office_names: Sequence[str] | None = None,
    blocked_devices: Sequence[str] = (),
    **options: Any,
) -> Path:
    """Write ``root/broker/acl`` and ``root/broker/mosquitto.conf``; returns the conf path.

    ``office_names`` defaults to every issued office client (:func:`office_clients`), or
    ``office-receiver`` if none is issued yet. ``persistence_location`` defaults to
    ``root/broker/data``. Other options go to :func:`render_mosquitto_conf`. Re-run it
    after issuing another office client or changing ``blocked_devices``, then send the
    broker SIGHUP (mosquitto re-reads the ACL file) or restart it.
    """
    layout = CaLayout(Path(root))
    names = list(office_names) if office_names is not None else office_clients(layout.root)
    acl = render_acl(names or [DEFAULT_OFFICE_CLIENT], blocked_devices)
    data_dir = persistence_location or layout.root / "broker" / "data"
    conf = render_mosquitto_conf(
        layout.root,
        port,
        persistence_location=data_dir,
        acl_file=layout.broker_acl,
        **options,
    )
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(layout.broker_acl, acl.encode())
    replace_file(layout.broker_conf, conf.encode())
    return layout.broker_conf
