"""Head-office CA (headoffice.enroll) and the broker it configures (real mosquitto 2.0).

The broker tests pin down what mosquitto 2.0.11 really does with this config:
- a publish outside the device's own topics gets PUBACK 0x87 (Not authorized) and is
  not delivered;
- SUBSCRIBE is not checked against the ACL file (SUBACK grants any filter); the ACL
  is applied per message at delivery, so a device subscribed to another device's acks
  (or to '#') receives nothing of theirs;
- a shared subscription is delivered by the ACL read check against the message topic,
  so no '$share/...' ACL line is needed; but any client can join a share group whose
  name it knows, and the messages round-robined to it are dropped: the office uses a
  random group name (office_share_group);
- the client id is forced to the certificate CN, so one device cannot take over
  another's session or kick it off.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from headoffice import brokerconf, enroll, officeroot
from headoffice.officeroot import (
    CaExists,
    CaLayout,
    CaMissing,
    DeviceUnknown,
    EnrollError,
    SigningKeyConflict,
)
from sealedrec import age, protocol
from sealedrec.keys import public_key_b64
from sealedrec.tlskeys import DEVICE_ID_PATTERN, DeviceIdError, TlsKeyError, make_device_csr
from tests.helpers import reaped, run_cli
from tests.mqtt_broker import (
    Broker,
    BrokerError,
    ConnectFailed,
    MqttProbe,
    Received,
    office_broker_conf,
    run_mosquitto,
)

NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10
GRANTED_QOS_1 = 1


def _signing_key() -> str:
    return public_key_b64(ed25519.Ed25519PrivateKey.generate().public_key())


def _csr(cn: str | list[str], key: object | None = None) -> bytes:
    """A CSR made by hand (make_device_csr refuses bad ids itself)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    cns = [cn] if isinstance(cn, str) else cn
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c, _validate=False) for c in cns])
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algo)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --------------------------------------------------------------------------- CA, no broker


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "office"
    enroll.init_ca(root, "Acme Calls Ltd")
    return root


def test_init_ca_makes_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "office"
    setup = enroll.init_ca(root, "Acme Calls Ltd", dns_names=["mqtt.acme.test", "localhost"])
    lay = CaLayout(root)
    for key in (lay.ca_key, lay.server_key, lay.office_key):
        assert _mode(key) == 0o600, key
    assert _mode(lay.ca_key.parent) == 0o700
    ca = _cert(lay.ca_cert)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    life = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= life <= dt.timedelta(days=3660)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert lay.broker_ca.read_bytes() == lay.ca_cert.read_bytes()

    server = _cert(lay.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.acme.test", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    # The age identity and its recipient belong together, and the setup says what devices need.
    identity = age.load_identities(lay.office_key)[0]
    assert age.format_recipient(identity.public_key()) == setup.recipient
    assert lay.office_pub.read_text().strip() == setup.recipient
    conf = setup.device_config("mqtt.acme.test")
    assert f'recipients = ["{setup.recipient}"]' in conf
    assert 'host = "mqtt.acme.test"' in conf and "port = 8883" in conf
    assert setup.ca_cert == lay.ca_cert


def test_init_ca_refuses_to_overwrite(root: Path) -> None:
    lay = CaLayout(root)
    before = {p: p.read_bytes() for p in (lay.ca_key, lay.ca_cert, lay.office_key)}
    with pytest.raises(CaExists, match=r"ca\.key already exists.*move .* away"):
        enroll.init_ca(root, "Other")
    assert {p: p.read_bytes() for p in before} == before
    # A half-made layout (here: only the office key) is refused too.
    other = root.parent / "other"
    (other / "keys").mkdir(parents=True)
    (other / "keys" / "office.key").write_text("x")
    with pytest.raises(CaExists, match=r"office\.key"):
        enroll.init_ca(other, "Other")
    assert not (other / "ca" / "ca.key").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dns_names": ["bad name"]}, "not a valid host name"),
        ({"ip_addresses": ["300.1.1.1"]}, "IP address"),
        ({"dns_names": [], "ip_addresses": []}, "at least one DNS name"),
    ],
)
def test_init_ca_checks_broker_names(
    tmp_path: Path, kwargs: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(EnrollError, match=message):
        enroll.init_ca(tmp_path / "o", "Acme", **kwargs)
    assert not (tmp_path / "o" / "ca" / "ca.key").exists()


def test_make_device_csr_makes_and_reuses_the_key(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "device-tls.key"
    first = x509.load_pem_x509_csr(make_device_csr(key_path, "shop-12.line_a"))
    assert _mode(key_path) == 0o600
    assert first.is_signature_valid
    assert first.subject.rfc4514_string() == "CN=shop-12.line_a"
    second = x509.load_pem_x509_csr(make_device_csr(key_path, "shop-12.line_a"))
    assert second.public_key() == first.public_key()
    with pytest.raises(DeviceIdError, match="not valid"):
        make_device_csr(key_path, "a/b")
    key_path.chmod(0o644)
    with pytest.raises(TlsKeyError, match="chmod 600"):
        make_device_csr(key_path, "shop-12")
    key_path.chmod(0o600)
    key_path.write_text("junk")
    with pytest.raises(TlsKeyError, match="not an unencrypted PEM"):
        make_device_csr(key_path, "shop-12")


def test_device_id_grammar_matches_the_topic_grammar() -> None:
    assert DEVICE_ID_PATTERN == protocol._ID  # the CN is the {device} level of every topic


def test_enroll_device_issues_a_client_cert_and_record(root: Path, tmp_path: Path) -> None:
    signing = _signing_key()
    cert_path = enroll.enroll_device(root, make_device_csr(tmp_path / "t.key", "A"), signing)
    lay = CaLayout(root)
    assert cert_path == lay.device_cert("A")
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(lay.ca_cert))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "A"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3 * 365) <= life <= dt.timedelta(days=3 * 365 + 2)

    record = json.loads(lay.device_record("A").read_text())
    assert record["device_id"] == "A"
    assert record["signing_key"] == signing
    der = cert.public_bytes(serialization.Encoding.DER)
    assert record["cert_sha256"] == hashlib.sha256(der).hexdigest()
    enrolled = dt.datetime.fromisoformat(record["enrolled_utc"])
    assert abs(enrolled - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert public_key_b64(officeroot.device_signing_key(root, "A")) == signing


@pytest.mark.filterwarnings("ignore:Attribute's length")
@pytest.mark.parametrize(
    "cn", ["../B", "a/b", "+", "#", "-lead", "x" * 65, "a b", "caf\u00e9", "linetap/A"]
)
def test_enroll_refuses_a_bad_device_id(root: Path, cn: str) -> None:
    with pytest.raises(EnrollError, match="not a valid device id"):
        enroll.enroll_device(root, _csr(cn), _signing_key())
    assert not list(CaLayout(root).devices.iterdir())


def test_enroll_refuses_two_common_names(root: Path) -> None:
    with pytest.raises(EnrollError, match="2 common names"):
        enroll.enroll_device(root, _csr(["A", "B"]), _signing_key())


def test_enroll_checks_the_csr_signature(root: Path) -> None:
    pem = _csr("A")
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(EnrollError, match="signature does not verify"):
        enroll.enroll_device(root, tampered.encode(), _signing_key())
    with pytest.raises(EnrollError, match="not a PEM CSR"):
        enroll.enroll_device(root, b"hello", _signing_key())


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), True),
        (ed25519.Ed25519PrivateKey.generate, True),
        (lambda: rsa.generate_private_key(65537, 2048), True),
        (lambda: rsa.generate_private_key(65537, 1024), False),
        (lambda: ec.generate_private_key(ec.SECP384R1()), False),
    ],
    ids=["p256", "ed25519", "rsa2048", "rsa1024", "p384"],
)
def test_enroll_key_types(root: Path, key: object, accepted: bool) -> None:
    csr = _csr("dev1", key())  # type: ignore[operator]
    if accepted:
        assert enroll.enroll_device(root, csr, _signing_key()).exists()
    else:
        with pytest.raises(EnrollError, match=r"device dev1: .* use EC P-256"):
            enroll.enroll_device(root, csr, _signing_key())


@pytest.mark.parametrize(
    "bad", ["", "not base64!", base64.b64encode(bytes(31)).decode()], ids=["empty", "junk", "31B"]
)
def test_enroll_checks_the_signing_key(root: Path, bad: str) -> None:
    with pytest.raises(EnrollError, match=r"device A: signing key .* not a base64 Ed25519"):
        enroll.enroll_device(root, _csr("A"), bad)
    assert not CaLayout(root).device_record("A").exists()


def test_reenrol_same_key_renews_other_key_needs_replace(root: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "t.key"
    signing = _signing_key()
    first = _cert(enroll.enroll_device(root, make_device_csr(key_path, "A"), signing))
    # Same signing key: a renewal (new serial), allowed.
    second = _cert(enroll.enroll_device(root, make_device_csr(key_path, "A"), signing))
    assert second.serial_number != first.serial_number

    other = _signing_key()
    with pytest.raises(SigningKeyConflict, match=r"device A: .*manifest chain.*replace=True"):
        enroll.enroll_device(root, make_device_csr(key_path, "A"), other)
    assert public_key_b64(officeroot.device_signing_key(root, "A")) == signing
    assert _cert(CaLayout(root).device_cert("A")).serial_number == second.serial_number

    enroll.enroll_device(root, make_device_csr(key_path, "A"), other, replace=True)
    assert public_key_b64(officeroot.device_signing_key(root, "A")) == other
    (archived,) = (CaLayout(root).devices / "replaced").glob("A-*.json")
    assert json.loads(archived.read_text())["signing_key"] == signing


def test_device_signing_key_unknown_devices(root: Path) -> None:
    with pytest.raises(DeviceUnknown, match="device nope: not enrolled"):
        officeroot.device_signing_key(root, "nope")
    with pytest.raises(DeviceUnknown, match="not a valid device id"):
        officeroot.device_signing_key(root, "../ca/ca")
    (CaLayout(root).devices / "bad.json").write_text("{")
    with pytest.raises(EnrollError, match=r"bad\.json: unreadable device record"):
        officeroot.device_signing_key(root, "bad")


def test_device_signing_keys_are_kept_until_the_record_changes(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's key lookup reads a record once, and again as soon as it is
    replaced (re-enrolment) or removed (the device is unknown at once)."""
    key_path = tmp_path / "t.key"
    signing, other = _signing_key(), _signing_key()
    enroll.enroll_device(root, make_device_csr(key_path, "A"), signing)
    keys = officeroot.DeviceSigningKeys(root)
    reads: list[Path] = []
    real_read = officeroot.read_device_record

    def counted(path: Path) -> officeroot.DeviceRecord:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(officeroot, "read_device_record", counted)
    assert [public_key_b64(keys("A")) for _ in range(3)] == [signing] * 3
    assert len(reads) == 1

    enroll.enroll_device(root, make_device_csr(key_path, "A"), other, replace=True)
    assert public_key_b64(keys("A")) == other
    assert len(reads) == 2

    CaLayout(root).device_record("A").unlink()
    with pytest.raises(DeviceUnknown, match="device A: not enrolled"):
        keys("A")
    with pytest.raises(DeviceUnknown, match="not a valid device id"):
        keys("../ca/ca")


def test_enroll_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CaMissing, match="run init_ca"):
        enroll.enroll_device(tmp_path, _csr("A"), _signing_key())


def test_devices_and_office_clients_share_one_namespace(root: Path) -> None:
    cert, key = enroll.issue_office_client(root)
    assert cert.name == "office-receiver.crt" and _mode(key) == 0o600
    eku = _cert(cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(EnrollError, match="belongs to an office receiver"):
        enroll.enroll_device(root, _csr("office-receiver"), _signing_key())
    enroll.enroll_device(root, _csr("A"), _signing_key())
    with pytest.raises(EnrollError, match="a device is enrolled under that name"):
        enroll.issue_office_client(root, "A")
    with pytest.raises(EnrollError, match="already exists"):
        enroll.issue_office_client(root)
    renewed, same_key = enroll.issue_office_client(root, replace=True)
    assert same_key == key and _cert(renewed).public_key() == _cert(cert).public_key()
    assert officeroot.office_clients(root) == ["office-receiver"]


def test_acl_and_conf_rendering(root: Path, tmp_path: Path) -> None:
    acl = brokerconf.render_acl(["office-receiver-1", "office-receiver-2"])
    assert acl.count("topic write linetap/+/ack/#") == 2
    assert "user office-receiver-1\n" in acl and "user office-receiver-2\n" in acl
    assert "user office-receiver\n" not in acl
    assert "pattern write linetap/%u/up/#" in acl
    conf = brokerconf.render_mosquitto_conf(root, 8883, persistence_location=tmp_path / "data")
    assert "\nrequire_certificate true\n" in conf
    assert "\nuse_identity_as_username true\n" in conf
    assert f"\npersistence_location {tmp_path / 'data'}/\n" in conf
    size = int(re.search(r"\nmax_packet_size (\d+)\n", conf).group(1))  # type: ignore[union-attr]
    assert size >= protocol.MAX_CHUNK_SIZE + 1024
    assert "$" not in conf.replace("$SYS", "")  # every placeholder substituted
    with pytest.raises(EnrollError, match="spaces"):
        brokerconf.render_mosquitto_conf(root, 8883, persistence_location=tmp_path / "a b")
    group = brokerconf.office_share_group(root)
    assert re.fullmatch(r"office-[0-9a-f]{32}", group)
    assert brokerconf.office_share_group(root) == group
    assert brokerconf.office_share_filter(root) == f"$share/{group}/linetap/+/up/#"


# --------------------------------------------------------------------------- with mosquitto


@dataclass
class Pki:
    root: Path
    ca: Path  # what clients trust (the broker's CA copy)
    creds: dict[str, tuple[Path, Path]]  # name -> (cert, key)
    share: str  # the office's shared-subscription filter


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    root = base / "office"
    enroll.init_ca(root, "Acme Calls Ltd")
    creds: dict[str, tuple[Path, Path]] = {}
    for device in ("A", "B"):
        key = base / device / "device-tls.key"
        creds[device] = (
            enroll.enroll_device(root, make_device_csr(key, device), _signing_key()),
            key,
        )
    # An Ed25519 TLS key works as well as the default P-256.
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (base / "C").mkdir()
    (base / "C" / "tls.key").write_bytes(
        ed_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    creds["C"] = (
        enroll.enroll_device(root, _csr("C", ed_key), _signing_key()),
        base / "C" / "tls.key",
    )
    creds["office"] = enroll.issue_office_client(root)
    return Pki(root, CaLayout(root).broker_ca, creds, brokerconf.office_share_filter(root))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("broker")
    with run_mosquitto(tmp, office_broker_conf(pki.root, tmp / "data")) as b:
        yield b


def _probe(broker: Broker, pki: Pki, who: str, **kwargs: object) -> MqttProbe:
    cert, key = pki.creds[who]
    return MqttProbe(broker, ca=pki.ca, cert=cert, key=key, **kwargs)  # type: ignore[arg-type]


def _until(probe: MqttProbe, topic: str) -> list[Received]:
    """Messages up to and including the first on ``topic`` (bounded by the probe timeout)."""
    got = []
    while True:
        msg = probe.get()
        got.append(msg)
        if msg.topic == topic:
            return got


def test_device_upload_reaches_the_office_share_group(broker: Broker, pki: Pki) -> None:
    with (
        _probe(broker, pki, "office").connect() as office,
        _probe(broker, pki, "A").connect() as dev,
    ):
        codes = office.subscribe(pki.share, "linetap/+/status")
        assert [c.value for c in codes] == [GRANTED_QOS_1, GRANTED_QOS_1]
        init = protocol.init_topic("A", "rec-1")
        rc = dev.publish(init, b'{"v":1}', user_properties=[("sha256", "0" * 64)])
        assert rc is not None and rc.value == 0
        msg = office.get()
        assert (msg.topic, msg.payload) == (init, b'{"v":1}')
        assert msg.properties == [("sha256", "0" * 64)]
        rc = dev.publish(protocol.status_topic("A"), b'{"state":"online"}', retain=True)
        assert rc is not None and rc.value in (0, NO_MATCHING_SUBSCRIBERS)
        assert office.get().topic == "linetap/A/status"
        dev.publish(protocol.status_topic("A"), b"", retain=True)  # clear the retained message


def test_a_device_cannot_publish_outside_its_topics(broker: Broker, pki: Pki) -> None:
    with (
        _probe(broker, pki, "office").connect() as office,
        _probe(broker, pki, "A").connect() as dev,
    ):
        office.subscribe(pki.share, "linetap/+/status", "linetap/+/ack/#")
        for topic in (
            protocol.init_topic("B", "rec-1"),  # another device's upload
            protocol.chunk_topic("B", "rec-1", 0),
            protocol.status_topic("B"),  # another device's telemetry
            protocol.ack_topic("A", "rec-1"),  # forging the store's ack to itself
            "linetap/A/other",
            "elsewhere",
        ):
            rc = dev.publish(topic, b"forged")
            assert rc is not None and rc.value == NOT_AUTHORIZED, (topic, rc)
        sentinel = protocol.fin_topic("A", "rec-2")
        rc = dev.publish(sentinel, b"mine")
        assert rc is not None and rc.value == 0
        got = _until(office, sentinel)
        assert [m.topic for m in got] == [sentinel], "a denied publish was delivered"
        assert "Denied PUBLISH" not in broker.log()  # only logged at debug level


def test_subscribe_is_granted_but_delivery_follows_the_acl(broker: Broker, pki: Pki) -> None:
    with (
        _probe(broker, pki, "office").connect() as office,
        _probe(broker, pki, "A").connect() as a,
        _probe(broker, pki, "B").connect() as b,
    ):
        # mosquitto 2.0.11 does not check SUBSCRIBE against the ACL file: all granted.
        codes = a.subscribe("linetap/B/ack/#", "linetap/A/ack/#", "linetap/+/up/#", "#")
        assert [c.value for c in codes] == [GRANTED_QOS_1] * 4
        assert [c.value for c in b.subscribe(protocol.ack_filter("B"))] == [GRANTED_QOS_1]
        # ...but every message is checked against the subscriber's read rights.
        rc = office.publish(protocol.ack_topic("B", "r1"), b"ack-B")
        assert rc is not None and rc.value == 0
        rc = b.publish(protocol.init_topic("B", "r1"), b"upload-B")
        assert rc is not None and rc.value in (0, NO_MATCHING_SUBSCRIBERS)
        rc = office.publish(protocol.ack_topic("A", "r1"), b"ack-A")
        assert rc is not None and rc.value == 0
        assert b.get().payload == b"ack-B"
        got = _until(a, "linetap/A/ack/r1")
        assert [m.payload for m in got] == [b"ack-A"], "device A saw B's traffic"


def test_share_group_name_must_be_secret(broker: Broker, pki: Pki) -> None:
    """Any client can join a share group it can name; what is dealt to it is dropped."""
    sentinel = protocol.status_topic("B")

    def run(office_filter: str) -> int:
        with (
            _probe(broker, pki, "office").connect() as office,
            _probe(broker, pki, "A").connect() as a,
            _probe(broker, pki, "B").connect() as b,
        ):
            office.subscribe(office_filter, sentinel)
            a.subscribe("$share/office/linetap/+/up/#")  # a guessable group name
            for i in range(10):
                b.publish(protocol.chunk_topic("B", "r9", i), b"x")
            b.publish(sentinel, b"done")
            got = _until(office, sentinel)
            assert not a.drain()
            return len(got) - 1

    assert run("$share/office/linetap/+/up/#") < 10  # mosquitto 2.0.11: 5 of 10 lost
    assert run(pki.share) == 10


def test_client_id_is_the_certificate_cn(broker: Broker, pki: Pki) -> None:
    with (
        _probe(broker, pki, "B", client_id="B").connect() as b,
        _probe(broker, pki, "A", client_id="B").connect(),
    ):
        # Had "B" been taken over, B would have been disconnected by now.
        rc = b.publish(protocol.init_topic("B", "r1"), b"still here")
        assert rc is not None and rc.value in (0, NO_MATCHING_SUBSCRIBERS)
        assert not b.disconnected.is_set()
    assert "as A (p5" in broker.log()


def test_a_blocked_device_can_do_nothing(broker: Broker, pki: Pki) -> None:
    acl = CaLayout(pki.root).broker_acl
    normal = acl.read_text()
    assert "topic deny" not in normal
    acl.write_text(
        brokerconf.render_acl(officeroot.office_clients(pki.root), blocked_devices=["C"])
    )
    try:
        broker.reload()
        with (
            _probe(broker, pki, "office").connect() as office,
            _probe(broker, pki, "C").connect() as c,
        ):
            c.subscribe(protocol.ack_filter("C"))
            rc = c.publish(protocol.init_topic("C", "r1"), b"x")
            assert rc is not None and rc.value == NOT_AUTHORIZED
            rc = office.publish(protocol.ack_topic("C", "r1"), b"ack")
            assert rc is not None and rc.value == 0  # the subscription matched...
            with pytest.raises(TimeoutError):
                c.get(timeout=0.5)  # ...but the read check denies it
    finally:
        acl.write_text(normal)
        broker.reload()
    with _probe(broker, pki, "C").connect() as c:
        rc = c.publish(protocol.init_topic("C", "r1"), b"x")
        assert rc is not None and rc.value in (0, NO_MATCHING_SUBSCRIBERS)


def test_ed25519_device_certificate_connects(broker: Broker, pki: Pki) -> None:
    with _probe(broker, pki, "C").connect() as c:
        rc = c.publish(protocol.init_topic("C", "r1"), b"x")
        assert rc is not None and rc.value in (0, NO_MATCHING_SUBSCRIBERS)
        rc = c.publish(protocol.init_topic("A", "r1"), b"x")
        assert rc is not None and rc.value == NOT_AUTHORIZED


def test_a_4mib_chunk_fits(broker: Broker, pki: Pki) -> None:
    chunk = os.urandom(protocol.MAX_CHUNK_SIZE)
    sha = hashlib.sha256(chunk).hexdigest()
    with (
        _probe(broker, pki, "office").connect() as office,
        _probe(broker, pki, "A", timeout=15.0).connect() as dev,
    ):
        office.subscribe(pki.share)
        topic = protocol.chunk_topic("A", "big", 0)
        rc = dev.publish(topic, chunk, user_properties=[(protocol.SHA256_PROPERTY, sha)])
        assert rc is not None and rc.value == 0
        msg = office.get(timeout=15.0)
        assert msg.topic == topic and hashlib.sha256(msg.payload).hexdigest() == sha


def test_no_client_certificate_no_connection(broker: Broker, pki: Pki) -> None:
    with MqttProbe(broker, ca=pki.ca, timeout=3.0) as anon, pytest.raises(ConnectFailed):
        anon.connect()
    # Nor plain MQTT on the TLS port.
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.connect(broker.host, broker.port)
    try:
        rc = plain.loop(timeout=1.0)
        for _ in range(20):
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            rc = plain.loop(timeout=0.2)
        assert rc != mqtt.MQTT_ERR_SUCCESS
        assert not plain.is_connected()
    finally:
        plain.disconnect()


def test_certificates_of_another_ca_are_refused(broker: Broker, pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "rogue"
    enroll.init_ca(other, "Rogue")
    key = tmp_path / "A.key"
    cert = enroll.enroll_device(other, make_device_csr(key, "A"), _signing_key())
    with (
        MqttProbe(broker, ca=pki.ca, cert=cert, key=key, timeout=3.0) as rogue,
        pytest.raises(ConnectFailed),
    ):
        rogue.connect()
    # And a device that trusts another CA refuses our broker.
    own_cert, own_key = pki.creds["A"]
    with (
        MqttProbe(
            broker, ca=CaLayout(other).ca_cert, cert=own_cert, key=own_key, timeout=3.0
        ) as wrong_trust,
        pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        wrong_trust.connect()


def _cli_tls(pki: Pki, who: str) -> list[str]:
    cert, key = pki.creds[who]
    return ["--cafile", str(pki.ca), "--cert", str(cert), "--key", str(key)]


def test_mosquitto_cli_with_a_device_certificate(broker: Broker, pki: Pki) -> None:
    """The documented diagnostics: mosquitto_pub / mosquitto_sub with a device's files."""
    addr = ["-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1"]

    def publish_as_b(topic: str, message: str) -> subprocess.CompletedProcess[str]:
        tls = _cli_tls(pki, "B")
        return run_cli("mosquitto_pub", *addr, *tls, "-t", topic, "-m", message, timeout=15)

    with _probe(broker, pki, "office").connect() as office:
        office.subscribe(pki.share)
        ok = publish_as_b("linetap/B/up/cli/init", "hi")
        assert ok.returncode == 0, ok.stderr
        msg = office.get()
        assert (msg.topic, msg.payload) == ("linetap/B/up/cli/init", b"hi")

        denied = publish_as_b("linetap/A/up/cli/init", "x")
        # mosquitto_pub 2.0.11 only warns (exit status 0) on a PUBACK 0x87.
        assert "Not authorized" in denied.stderr

        sub_argv = ["mosquitto_sub", *addr, *_cli_tls(pki, "B"), "-t", "linetap/B/ack/+"]
        sub_argv += ["-C", "1", "-W", "10", "-v"]
        popen = subprocess.Popen(
            sub_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        with reaped(popen) as sub:
            # Its output is block-buffered: learn that it has subscribed from the PUBACK
            # instead (v5: 0x10 "no matching subscribers" until it has).
            deadline = time.monotonic() + 10
            while True:
                rc = office.publish(protocol.ack_topic("B", "cli"), b'{"status":"stored"}')
                assert rc is not None
                if rc.value == 0 or time.monotonic() > deadline or sub.poll() is not None:
                    break
                time.sleep(0.05)
            out, err = sub.communicate(timeout=15)
        assert rc.value == 0, f"mosquitto_sub never subscribed: {err}"
        assert sub.returncode == 0, err
        assert out == 'linetap/B/ack/cli {"status":"stored"}\n'
    assert not office.drain()


# --------------------------------------------------------------------------- the helper


def test_restart_keeps_port_and_queued_messages(pki: Pki, tmp_path: Path) -> None:
    with run_mosquitto(tmp_path, office_broker_conf(pki.root, tmp_path / "data")) as broker:
        port = broker.port
        session = {"client_id": "office-receiver", "clean_start": False, "session_expiry_s": 600}
        with _probe(broker, pki, "office", **session).connect() as office:
            office.subscribe(pki.share)
        with _probe(broker, pki, "A").connect() as dev:
            rc = dev.publish(protocol.init_topic("A", "queued"), b"while the office is away")
            assert rc is not None and rc.value == 0

        broker.restart()  # SIGTERM: mosquitto writes its persistence file
        assert broker.port == port and broker.running()
        with _probe(broker, pki, "office", **session).connect() as office:
            msg = office.get()
            assert msg.payload == b"while the office is away"

        broker.restart(kill=True)  # a crash; same port again
        assert broker.port == port
        with _probe(broker, pki, "A").connect() as dev:
            assert dev.publish(protocol.init_topic("A", "after"), b"x") is not None
        proc = broker.proc
    assert proc.poll() is not None  # stopped on leaving the block


def test_persistence_works_without_a_user_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conf = (
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {data}/\nlog_dest stdout\n"
    )
    with run_mosquitto(tmp_path, conf) as broker:
        addr = ["-h", broker.host, "-p", str(broker.port), "-t", "t/retained"]
        subprocess.run(
            ["mosquitto_pub", *addr, "-r", "-q", "1", "-m", "kept"], check=True, timeout=10
        )
        broker.restart()
        assert "Error saving" not in broker.log()
        got = subprocess.run(
            ["mosquitto_sub", *addr, "-C", "1", "-W", "5"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert got.stdout == "kept\n"


def test_a_broken_config_fails_fast_with_the_log(tmp_path: Path) -> None:
    with (
        pytest.raises(BrokerError, match=r"(?s)exited with status .*no_such_option"),
        run_mosquitto(tmp_path, "listener {port} 127.0.0.1\nno_such_option true\n"),
    ):
        pass
    with pytest.raises(ValueError, match="must contain"), run_mosquitto(tmp_path, "listener 1\n"):
        pass
