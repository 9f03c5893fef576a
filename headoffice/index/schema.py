"""The index's tables (one DDL for both backends) and its schema version."""

from __future__ import annotations

SCHEMA_VERSION = 1


def _schema(pg: bool) -> list[str]:
    boolean = "BOOLEAN" if pg else "INTEGER"
    serial = (
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if pg
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    return [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS recordings (
            recording_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            line TEXT NOT NULL,
            seq BIGINT NOT NULL,
            started_utc TEXT NOT NULL,
            ended_utc TEXT,
            duration_ms BIGINT NOT NULL,
            caller_number TEXT,
            caller_name TEXT,
            dialled_digits TEXT NOT NULL,
            direction TEXT,
            recovered {boolean} NOT NULL,
            discarded {boolean} NOT NULL,
            codec TEXT,
            container TEXT,
            blob_sha256 TEXT,
            blob_bytes BIGINT NOT NULL,
            path TEXT NOT NULL,
            manifest TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            stored_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS recordings_device_seq ON recordings (device_id, seq)",
        "CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_utc)",
        """CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY,
            last_seq BIGINT NOT NULL,
            last_manifest_sha256 TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS alarms (
            id {serial},
            device_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            seq BIGINT,
            recording_id TEXT,
            raised_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS alarms_device ON alarms (device_id, id)",
        """CREATE TABLE IF NOT EXISTS uploads (
            device_id TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            init TEXT NOT NULL,
            chunk_count BIGINT NOT NULL,
            received BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (device_id, recording_id))""",
    ]
