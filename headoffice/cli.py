"""``linetap-office``: the head-office command line.

linetap-office init --config office.toml --name "ACME Head Office" [--dns H] [--ip A]
linetap-office enroll-device --config office.toml --csr device.csr --signing-key B64 [--replace]
linetap-office office-client --config office.toml [--name office-receiver-1]
linetap-office broker-config --config office.toml [--port 8883]
linetap-office serve --config office.toml [--client office-receiver-2]
linetap-office ls|search|show|export|verify --config office.toml ...

Every command takes the same ``--config office.toml`` (default ``$LINETAP_OFFICE_CONFIG``,
else /etc/linetap-office/office.toml); ``--root DIR`` (alias ``--store``) and ``--index
URL`` name a store without a config, as before. One resolver for all of them:
:func:`headoffice.cli_query.office_location`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headoffice import service
from headoffice.brokerconf import write_broker_config
from headoffice.cli_audit import add_audit_commands
from headoffice.cli_dsar import add_dsar_commands
from headoffice.cli_fleet import add_fleet_commands
from headoffice.cli_lifecycle import add_lifecycle_commands
from headoffice.cli_query import add_query_commands, office_location, office_options
from headoffice.cli_users import add_user_commands
from headoffice.cli_web import add_web_command
from headoffice.config import load_office_config, office_config_path
from headoffice.device_settings import add_settings_commands
from headoffice.enroll import enroll_device, init_ca, issue_office_client
from headoffice.index import open_index
from headoffice.notify.cli import add_notify_commands
from headoffice.officeroot import CaLayout
from runtime import __version__
from runtime.process import run_command, setup_logging


def cmd_init(args: argparse.Namespace) -> int:
    setup = init_ca(
        office_location(args).root,
        args.name,
        dns_names=args.dns or ("localhost",),
        ip_addresses=args.ip or ("127.0.0.1",),
    )
    print(f"office set up in {setup.root}")
    print(f"  office identity (decrypts recordings; keep it safe): {setup.office_key}")
    print(f"  CA certificate for devices: {setup.ca_cert}")
    print(f"  recipient for every device's sealing.recipients: {setup.recipient}")
    return 0


def cmd_enroll_device(args: argparse.Namespace) -> int:
    cert = enroll_device(
        office_location(args).root,
        Path(args.csr).read_bytes(),
        args.signing_key,
        replace=args.replace,
    )
    print(f"device certificate: {cert}")
    return 0


def cmd_office_client(args: argparse.Namespace) -> int:
    cert, key = issue_office_client(office_location(args).root, args.name, replace=args.replace)
    print(f"office client certificate: {cert}\nkey: {key}")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    path = write_broker_config(office_location(args).root, args.port)
    print(f"mosquitto config: {path}  (run: mosquitto -c {path})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_office_config(office_config_path(args.config))  # the broker needs a config
    if args.client is not None:
        # One worker of several (linetap-office-serve@NAME.service): its own client id
        # and the certificate `office-client --name NAME` issued.
        layout = CaLayout(cfg.root)
        broker = cfg.broker.model_copy(
            update={
                "client_id": args.client,
                "cert_file": layout.office_client_cert(args.client),
                "key_file": layout.office_client_key(args.client),
            }
        )
        cfg = cfg.model_copy(update={"broker": broker})
    setup_logging(args.log_level)
    index = open_index(cfg.index_url)
    try:
        return service.serve(cfg, service.build_receiver(cfg, index))
    finally:
        index.close()


def build_parser() -> argparse.ArgumentParser:
    where = office_options(index=False)  # --config, --root (--store)
    parser = argparse.ArgumentParser(prog="linetap-office", description="linetap head office")
    parser.add_argument("--version", action="version", version=f"linetap-office {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "init",
        parents=[where],
        help="create the office CA, broker certificate and age identity (once)",
    )
    p.add_argument("--name", required=True, help="office name in the certificates")
    p.add_argument("--dns", action="append", help="broker host name devices use (repeatable)")
    p.add_argument("--ip", action="append", help="broker IP address devices use (repeatable)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "enroll-device",
        aliases=["enroll"],
        parents=[where],
        help="sign a device's TLS certificate request and record its signing key",
    )
    p.add_argument("--csr", required=True, help="the device's CSR (linetap keys csr)")
    p.add_argument(
        "--signing-key", required=True, help="the device's public signing key (linetap keys show)"
    )
    p.add_argument(
        "--replace", action="store_true", help="accept a new signing key for a known device"
    )
    p.set_defaults(func=cmd_enroll_device)

    p = sub.add_parser(
        "office-client", parents=[where], help="issue a client certificate for a receiver worker"
    )
    p.add_argument("--name", default="office-receiver")
    p.add_argument("--replace", action="store_true")
    p.set_defaults(func=cmd_office_client)

    p = sub.add_parser(
        "broker-config",
        parents=[where],
        help="write the mosquitto config (TLS, client certs, ACL)",
    )
    p.add_argument("--port", type=int, default=8883)
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser("serve", help="receive, verify, store and acknowledge recordings")
    p.add_argument(
        "--config",
        type=Path,
        metavar="OFFICE_TOML",
        help="the office config (default $LINETAP_OFFICE_CONFIG, else "
        "/etc/linetap-office/office.toml)",
    )
    p.add_argument(
        "--client",
        metavar="NAME",
        help="run as office client NAME (one of several workers): MQTT client id NAME and "
        "the certificate ROOT/office/NAME.crt|.key from office-client, instead of the "
        "config's broker.client_id / cert_file / key_file",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    add_query_commands(sub)
    add_settings_commands(sub)
    add_user_commands(sub)
    add_audit_commands(sub)
    add_web_command(sub)
    add_lifecycle_commands(sub)
    add_fleet_commands(sub)
    add_notify_commands(sub)
    add_dsar_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("linetap-office", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
