"""The webhook channel: a batch as one signed JSON POST.

Body (compact JSON, keys sorted)::

    {"batch_id": "…", "notifications": [{…}, …], "sent_at": "2026-11-25T10:00:00.000+00:00"}

Headers: ``X-Linetap-Timestamp: <unix seconds>`` and ``X-Linetap-Signature:
sha256=<hex>``, the HMAC-SHA256 with the shared secret of the bytes
``<timestamp> "." <body>`` (as Stripe and GitHub do: the timestamp is signed too, so a
captured request cannot be replayed later with a fresh one). ``X-Linetap-Batch`` repeats
the message's id. Delivery is at least once: a receiver that must not act twice drops a
notification ``id`` it has seen (a retry may fold new ones in, under a new batch id).
A 2xx answer is delivered; anything else
(a redirect too: the body would be lost), a timeout or no connection is retried.

Nothing of the URL but its scheme, host and port appears in errors: chat webhooks carry
their token in the path.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import IO, Any
from urllib.parse import urlsplit

from headoffice.notify.model import (
    Batch,
    Channel,
    DeliveryError,
    WebhookConfig,
    clean_text,
    iso,
)

SIGNATURE_HEADER = "X-Linetap-Signature"
TIMESTAMP_HEADER = "X-Linetap-Timestamp"
BATCH_HEADER = "X-Linetap-Batch"
MAX_ANSWER = 64 * 1024


def payload(batch: Batch) -> bytes:
    """The exact bytes POSTed (and signed)."""
    document = {
        "batch_id": batch.id,
        "notifications": [n.to_json() for n in batch.notifications],
        "sent_at": iso(batch.sent_at),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of timestamp "." body>``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: urllib would re-send a POST as a GET."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class WebhookSender:
    """POSTs a batch (see the module docstring)."""

    channel = Channel.WEBHOOK

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self.server = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def _secret(self) -> bytes:
        if self.cfg.secret is not None:
            return self.cfg.secret.get_secret_value().encode()
        assert self.cfg.secret_file is not None  # the config requires one of them
        try:
            # Read at each send: a rotated secret needs no restart.
            return self.cfg.secret_file.read_bytes().strip()
        except OSError as exc:
            raise DeliveryError(
                f"secret_file {self.cfg.secret_file}: cannot read ({exc.strerror or exc})"
            ) from None

    def _opener(self) -> urllib.request.OpenerDirector:
        ca = None if self.cfg.ca_file is None else str(self.cfg.ca_file)
        try:
            context = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"ca_file {ca}: cannot load ({exc})") from None
        return urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )

    def send(self, batch: Batch) -> str:
        """Deliver ``batch``; its id. Raises :class:`DeliveryError`."""
        body = payload(batch)
        timestamp = str(int(batch.sent_at.timestamp()))
        request = urllib.request.Request(
            self.cfg.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "linetap-office",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature(self._secret(), timestamp, body),
                BATCH_HEADER: batch.id,
            },
        )
        try:
            with self._opener().open(request, timeout=self.cfg.timeout_s) as answer:
                answer.read(MAX_ANSWER)
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(
                f"{self.server} answered HTTP {exc.code} {clean_text(exc.reason or '', 80)}"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise DeliveryError(
                    f"{self.server}: no answer within {self.cfg.timeout_s:g} s"
                ) from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DeliveryError(
                    f"{self.server}: its TLS certificate is not trusted "
                    f"({reason.verify_message}); set ca_file for a private CA"
                ) from None
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise DeliveryError(f"{self.server}: cannot connect ({text})") from None
        except TimeoutError:
            raise DeliveryError(
                f"{self.server}: no answer within {self.cfg.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise DeliveryError(f"{self.server}: {exc.strerror or type(exc).__name__}") from None
        except http.client.HTTPException as exc:
            raise DeliveryError(f"{self.server}: bad HTTP answer ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.server} answered HTTP {status}")
        return batch.id
