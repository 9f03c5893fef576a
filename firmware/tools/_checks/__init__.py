"""The checks behind ``linetap check``: one small function per precondition, by area.

Each function takes what it looks at (a config section, a capture source, a pin factory,
a clock reading, ``now``) and returns :class:`Check` results; none of them prints or
builds its own hardware, so tests feed them real backends or prepared inputs.
``firmware.tools.check`` wires them to the appliance and prints the results.
"""

from __future__ import annotations

from firmware.tools._checks.announce import (
    CHECK_TONE_S as CHECK_TONE_S,
)
from firmware.tools._checks.announce import (
    check_announce as check_announce,
)
from firmware.tools._checks.audio import (
    _read_frames as _read_frames,
)
from firmware.tools._checks.audio import (
    _source_name as _source_name,
)
from firmware.tools._checks.audio import (
    check_audio as check_audio,
)
from firmware.tools._checks.audio import (
    check_signal as check_signal,
)
from firmware.tools._checks.audio import (
    recorder_running as recorder_running,
)
from firmware.tools._checks.base import (
    _GROUP_OTHER as _GROUP_OTHER,
)
from firmware.tools._checks.base import (
    _MQTT_LOOP_S as _MQTT_LOOP_S,
)
from firmware.tools._checks.base import (
    _NOT_AUTHORISED as _NOT_AUTHORISED,
)
from firmware.tools._checks.base import (
    _SEVERITY as _SEVERITY,
)
from firmware.tools._checks.base import (
    _X509_NAME_MISMATCH as _X509_NAME_MISMATCH,
)
from firmware.tools._checks.base import (
    BROKER_TIMEOUT_S as BROKER_TIMEOUT_S,
)
from firmware.tools._checks.base import (
    CAPTURE_S as CAPTURE_S,
)
from firmware.tools._checks.base import (
    CERT_WARN_DAYS as CERT_WARN_DAYS,
)
from firmware.tools._checks.base import (
    CLIP_FAIL_FRACTION as CLIP_FAIL_FRACTION,
)
from firmware.tools._checks.base import (
    LED_ON_S as LED_ON_S,
)
from firmware.tools._checks.base import (
    MIB as MIB,
)
from firmware.tools._checks.base import (
    MIN_CAPTURE_S as MIN_CAPTURE_S,
)
from firmware.tools._checks.base import (
    MIN_WRITE_MB_S as MIN_WRITE_MB_S,
)
from firmware.tools._checks.base import (
    TLS_VERDICT_S as TLS_VERDICT_S,
)
from firmware.tools._checks.base import (
    WRITE_CHUNK_BYTES as WRITE_CHUNK_BYTES,
)
from firmware.tools._checks.base import (
    WRITE_TEST_BYTES as WRITE_TEST_BYTES,
)
from firmware.tools._checks.base import (
    Check as Check,
)
from firmware.tools._checks.base import (
    Status as Status,
)
from firmware.tools._checks.base import (
    _combine as _combine,
)
from firmware.tools._checks.base import (
    skipped as skipped,
)
from firmware.tools._checks.base import (
    split_fix as split_fix,
)
from firmware.tools._checks.base import (
    worst as worst,
)
from firmware.tools._checks.broker import (
    _TLS_ALERT as _TLS_ALERT,
)
from firmware.tools._checks.broker import (
    _close as _close,
)
from firmware.tools._checks.broker import (
    _refused_certificate as _refused_certificate,
)
from firmware.tools._checks.broker import (
    _tls_alert as _tls_alert,
)
from firmware.tools._checks.broker import (
    _tls_verdict as _tls_verdict,
)
from firmware.tools._checks.broker import (
    check_broker as check_broker,
)
from firmware.tools._checks.broker import (
    classify_connect_error as classify_connect_error,
)
from firmware.tools._checks.card import (
    check_card as check_card,
)
from firmware.tools._checks.gpio import (
    _check_hook as _check_hook,
)
from firmware.tools._checks.gpio import (
    _leds as _leds,
)
from firmware.tools._checks.gpio import (
    _level_name as _level_name,
)
from firmware.tools._checks.gpio import (
    check_hooks as check_hooks,
)
from firmware.tools._checks.gpio import (
    check_leds as check_leds,
)
from firmware.tools._checks.gpio import (
    hooks_from_recorder as hooks_from_recorder,
)
from firmware.tools._checks.gpio import (
    leds_from_recorder as leds_from_recorder,
)
from firmware.tools._checks.keys import (
    _ENROL as _ENROL,
)
from firmware.tools._checks.keys import (
    _check_ca as _check_ca,
)
from firmware.tools._checks.keys import (
    _check_tls_cert as _check_tls_cert,
)
from firmware.tools._checks.keys import (
    _check_tls_key as _check_tls_key,
)
from firmware.tools._checks.keys import (
    _Finding as _Finding,
)
from firmware.tools._checks.keys import (
    _load_certs as _load_certs,
)
from firmware.tools._checks.keys import (
    _mode_owner as _mode_owner,
)
from firmware.tools._checks.keys import (
    _private_key_file as _private_key_file,
)
from firmware.tools._checks.keys import (
    _spki as _spki,
)
from firmware.tools._checks.keys import (
    _user as _user,
)
from firmware.tools._checks.keys import (
    _validity as _validity,
)
from firmware.tools._checks.keys import (
    _whoami as _whoami,
)
from firmware.tools._checks.keys import (
    check_device_key as check_device_key,
)
from firmware.tools._checks.keys import (
    check_recipients as check_recipients,
)
from firmware.tools._checks.keys import (
    check_tls as check_tls,
)
from firmware.tools._checks.system import (
    _data_dir_missing as _data_dir_missing,
)
from firmware.tools._checks.system import (
    _write_failure as _write_failure,
)
from firmware.tools._checks.system import (
    check_clock as check_clock,
)
from firmware.tools._checks.system import (
    check_config as check_config,
)
from firmware.tools._checks.system import (
    check_free_space as check_free_space,
)
from firmware.tools._checks.system import (
    check_write_speed as check_write_speed,
)
