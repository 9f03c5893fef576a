"""The index's tables (one DDL for both backends) and its schema version.

Version 2 adds the people and the proof: accounts (``users``, ``user_roles``,
``user_scope``, ``sessions``) and the audit ledger (``ledger``, ``checkpoints``), which
triggers keep append-only on both backends (on PostgreSQL the application role also gets
INSERT and SELECT only on them: :func:`app_role_grants`).
"""

from __future__ import annotations

from headoffice.index import announcements
from headoffice.index.records import Query

SCHEMA_VERSION = 2
APPEND_ONLY = ("ledger", "checkpoints", "tombstones")


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
        *announcements.table(pg),
        *_people(pg, boolean),
        *_tombstones(),  # before the append-only triggers of _ledger, which cover it
        *_ledger(pg),
        *search_indexes(),
        *_review(pg),
        *_scorecards(pg, boolean),
        *_holds(pg),
        *_api_tokens(pg),
        *_retention_locks(),
        *_fleet(pg),
        *_notify(pg),
    ]


def _people(pg: bool, boolean: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            totp_secret TEXT,
            totp_last_step BIGINT NOT NULL DEFAULT 0,
            disabled {boolean} NOT NULL DEFAULT {"FALSE" if pg else "0"},
            failed_logins INTEGER NOT NULL DEFAULT 0,
            locked_until TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS user_roles (
            name TEXT NOT NULL REFERENCES users (name),
            role TEXT NOT NULL,
            PRIMARY KEY (name, role))""",
        """CREATE TABLE IF NOT EXISTS user_scope (
            name TEXT NOT NULL REFERENCES users (name),
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (name, kind, value))""",
        """CREATE TABLE IF NOT EXISTS sessions (
            token_sha256 TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES users (name),
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            second_factor TEXT NOT NULL,
            client TEXT NOT NULL)""",
    ]


def _ledger(pg: bool) -> list[str]:
    tables = [
        # idx: the leaf's 0-based position in the Merkle log, gapless by construction
        # (appended under a lock as max + 1); body: the leaf's canonical JSON.
        """CREATE TABLE IF NOT EXISTS ledger (
            idx BIGINT PRIMARY KEY,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            leaf_sha256 TEXT NOT NULL,
            appended_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS ledger_kind ON ledger (kind, idx)",
        """CREATE TABLE IF NOT EXISTS checkpoints (
            tree_size BIGINT PRIMARY KEY,
            root_sha256 TEXT NOT NULL,
            note TEXT NOT NULL,
            made_at TEXT NOT NULL)""",
    ]
    if pg:
        return [*tables, *_pg_append_only()]
    return [*tables, *_sqlite_append_only()]


def _sqlite_append_only() -> list[str]:
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{verb} BEFORE {verb.upper()} ON {table}
            BEGIN SELECT RAISE(ABORT, 'the {table} table is append-only'); END"""
        for table in APPEND_ONLY
        for verb in ("update", "delete")
    ]


def _pg_append_only() -> list[str]:
    statements = [
        """CREATE OR REPLACE FUNCTION linetap_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING MESSAGE = 'the ' || TG_TABLE_NAME || ' table is append-only';
            END $$""",
    ]
    for table in APPEND_ONLY:
        statements += [
            f"""CREATE OR REPLACE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION linetap_append_only()""",
            f"""CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION linetap_append_only()""",
        ]
    return statements


def app_role_grants(role: str) -> list[str]:
    """The PostgreSQL grants for the office's application role: everything it needs on
    the index, and on the ledger tables INSERT and SELECT only (so even without the
    triggers the application cannot rewrite history; the owner role runs migrations)."""
    if not role.replace("_", "").isalnum():
        raise ValueError(f"role {role!r}: letters, digits and _ only")
    mutable = ("recordings", "devices", "alarms", "uploads", "users", "user_roles",
               "user_scope", "sessions", "schema_version", "api_tokens",
               "announcements")  # fmt: skip
    return [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(mutable)} TO {role}",
        f"GRANT SELECT, INSERT ON {', '.join(APPEND_ONLY)} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(REVIEW_TABLES)} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(FLEET_TABLES)} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(NOTIFY_TABLES)} TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ]


#: The search page's indexes (headoffice.web.search), the same on both backends; measured
#: by bench/search_page.py: name -> what it indexes. Each one serves a sort of the page
#: (walked forward or backward with LIMIT, no sort of every match) or a selective filter.
SEARCH_INDEXES: dict[str, str] = {
    # sort=started (the default, newest first), and date ranges, in the exact ORDER BY;
    # line and duration_ms after it make it cover the KPI dashboard's period counts too
    # (headoffice.web.dashboard: no read of the wide rows with their manifests)
    "recordings_started_cover": (
        "recordings (started_utc, device_id, seq, recording_id, line, duration_ms)"
    ),
    # device (+ line) filters and scopes, and sort=device, in start order within each
    "recordings_device_line_started": "recordings (device_id, line, started_utc)",
    # sort=duration and duration ranges
    "recordings_duration": "recordings (duration_ms, started_utc)",
    # sort=caller (the ORDER BY's own expression)
    "recordings_caller": "recordings ((COALESCE(caller_number, '')), started_utc)",
    # caller substrings (LIKE '%...%' uses no b-tree): a narrow covering index the COUNT
    # and a rare substring's IN (SELECT recording_id ...) scan instead of the table's wide
    # rows (index-only scan / covering index)
    "recordings_caller_ids": "recordings (caller_number, caller_name, recording_id)",
}


#: Search indexes an older office made that a newer one replaced: dropped at open.
RETIRED_INDEXES = ("recordings_caller_text", "recordings_started_order")


def search_indexes() -> list[str]:
    return [
        *(f"DROP INDEX IF EXISTS {name}" for name in RETIRED_INDEXES),
        *(f"CREATE INDEX IF NOT EXISTS {name} ON {what}" for name, what in SEARCH_INDEXES.items()),
    ]


#: The web review's own tables (headoffice.web.notes): notes and bookmarks at a position in
#: a call, and who marked a recording reviewed.
REVIEW_TABLES = ("notes", "reviews", "qa_forms", "qa_evaluations", "qa_section_scores",
                 "holds", "retention_locks")  # fmt: skip


def _review(pg: bool) -> list[str]:
    serial = (
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if pg
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    return [
        _notes_table("notes", serial),
        *(_PG_NOTES_MIGRATION if pg else ()),
        _NOTES_INDEX,
        """CREATE TABLE IF NOT EXISTS reviews (
            recording_id TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            reviewed_at TEXT NOT NULL,
            PRIMARY KEY (recording_id, reviewer))""",
    ]


_NOTES_INDEX = "CREATE INDEX IF NOT EXISTS notes_recording ON notes (recording_id, at_ms, id)"


def _notes_table(name: str, serial: str) -> str:
    # at_ms: the position in the call (a sensitive span's start); end_ms: a sensitive
    # span's end (NULL for a note or bookmark); kind: 'note', 'bookmark' or 'sensitive',
    # checked by headoffice.web.notes.NoteStore, not by a CHECK: SQLite cannot change a
    # CHECK in place, so a new kind would cost every office a table rebuild again.
    return f"""CREATE TABLE IF NOT EXISTS {name} (
            id {serial},
            recording_id TEXT NOT NULL,
            author TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            end_ms BIGINT,
            kind TEXT NOT NULL,
            text TEXT NOT NULL CHECK (length(text) <= 2000),
            created_at TEXT NOT NULL)"""


#: An index made before sensitive spans (issue 17) has ``notes`` without ``end_ms`` and
#: with ``CHECK (kind IN ('note', 'bookmark'))``. PostgreSQL alters it in place, each
#: step only when needed (no exclusive lock on ``notes`` at every open); SQLite:
#: :func:`migrate_sqlite`. No '?' or '%' in here: the backends' placeholders.
_PG_NOTES_MIGRATION = (
    """DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = current_schema() AND table_name = 'notes'
                       AND column_name = 'end_ms') THEN
            ALTER TABLE notes ADD COLUMN end_ms BIGINT;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'notes'::regclass AND conname = 'notes_kind_check') THEN
            ALTER TABLE notes DROP CONSTRAINT notes_kind_check;
        END IF;
    END $$""",
)


def migrate_sqlite(q: Query) -> None:
    """Bring an older SQLite index's ``notes`` up to :func:`_notes_table` inside the
    opening transaction (see :data:`_PG_NOTES_MIGRATION`). SQLite cannot drop a CHECK,
    so a table with the old one is rebuilt (SQLite's documented procedure: new table,
    copy, drop, rename; ids kept, and the AUTOINCREMENT high-water mark too, so no id is
    handed out twice); one without ``end_ms`` only (none made by this code) gets the
    column added. Idempotent: an up-to-date table is left alone."""
    rows = q("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'notes'", ())
    if not rows:
        return
    columns = {str(r[1]) for r in q("PRAGMA table_info(notes)", ())}
    if "CHECK (kind IN" in str(rows[0][0]):
        copied = "id, recording_id, author, at_ms, kind, text, created_at"
        if "end_ms" in columns:
            copied += ", end_ms"
        high = q("SELECT seq FROM sqlite_sequence WHERE name = 'notes'", ())
        q(_notes_table("notes_rebuilt", "INTEGER PRIMARY KEY AUTOINCREMENT"), ())
        q(f"INSERT INTO notes_rebuilt ({copied}) SELECT {copied} FROM notes", ())
        q("DROP TABLE notes", ())
        q("ALTER TABLE notes_rebuilt RENAME TO notes", ())
        if high:
            now = q("SELECT seq FROM sqlite_sequence WHERE name = 'notes'", ())
            top = max(int(high[0][0]), int(now[0][0]) if now else 0)
            q("DELETE FROM sqlite_sequence WHERE name = 'notes'", ())
            q("INSERT INTO sqlite_sequence (name, seq) VALUES ('notes', ?)", (top,))
        q(_NOTES_INDEX, ())
    elif "end_ms" not in columns:
        q("ALTER TABLE notes ADD COLUMN end_ms BIGINT", ())


def _serial(pg: bool) -> str:
    return (
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if pg
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )


def _scorecards(pg: bool, boolean: str) -> list[str]:
    """QA scorecards (headoffice.web.scorecards): forms, and evaluations against them.

    A form is immutable once saved: editing saves a new ``version`` of the same ``name``
    (``definition``: the form model's canonical JSON), so an evaluation always refers to
    the exact questions it answered. Scores are integer basis points (0..10000 = 0..100 %)
    so both backends sum and average them exactly. ``device_id``, ``line`` and
    ``call_started_utc`` are copied from the recording so the lists and the KPI dashboard
    group and filter evaluations without a join; ``agent`` is who was evaluated (the
    line's agent, typed by the evaluator; the line when left empty).
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS qa_forms (
            id {_serial(pg)},
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            retired {boolean} NOT NULL DEFAULT {"FALSE" if pg else "0"},
            UNIQUE (name, version))""",
        f"""CREATE TABLE IF NOT EXISTS qa_evaluations (
            id {_serial(pg)},
            recording_id TEXT NOT NULL,
            form_id BIGINT NOT NULL REFERENCES qa_forms (id),
            evaluator TEXT NOT NULL,
            agent TEXT NOT NULL,
            device_id TEXT NOT NULL,
            line TEXT NOT NULL,
            call_started_utc TEXT NOT NULL,
            raw_bp INTEGER NOT NULL CHECK (raw_bp BETWEEN 0 AND 10000),
            score_bp INTEGER NOT NULL CHECK (score_bp BETWEEN 0 AND 10000),
            failed {boolean} NOT NULL,
            answers TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS qa_evaluations_recording ON qa_evaluations (recording_id)",
        "CREATE INDEX IF NOT EXISTS qa_evaluations_form ON qa_evaluations (form_id, created_at)",
        """CREATE INDEX IF NOT EXISTS qa_evaluations_line
            ON qa_evaluations (device_id, line, call_started_utc)""",
        "CREATE INDEX IF NOT EXISTS qa_evaluations_agent ON qa_evaluations (agent, created_at)",
        # one row per section of an evaluation: the dashboard's average per section
        """CREATE TABLE IF NOT EXISTS qa_section_scores (
            evaluation_id BIGINT NOT NULL REFERENCES qa_evaluations (id),
            section TEXT NOT NULL,
            score_bp INTEGER NOT NULL CHECK (score_bp BETWEEN 0 AND 10000),
            PRIMARY KEY (evaluation_id, section))""",
    ]


def _tombstones() -> list[str]:
    """What is left of a deleted recording (purge or erasure: headoffice.erasure): no
    personal data, only what keeps its device's hash chain checkable across the gap
    (seq, its manifest's hash and the hash it pointed back to) and why it went. Rows
    are never changed or removed; each has its ledger tombstone leaf too."""
    return [
        """CREATE TABLE IF NOT EXISTS tombstones (
            recording_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            prev_manifest_sha256 TEXT NOT NULL,
            blob_sha256 TEXT,
            deleted_at TEXT NOT NULL,
            deleted_by TEXT NOT NULL,
            cause TEXT NOT NULL,
            UNIQUE (device_id, seq))""",
    ]


def _holds(pg: bool) -> list[str]:
    """Legal holds: a recording is on hold while it has a row with ``released_at`` NULL.

    Rows are never deleted: a release fills ``released_*``, so the table is the hold
    history (each set and release is a ledger leaf as well).
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS holds (
            id {_serial(pg)},
            recording_id TEXT NOT NULL,
            case_ref TEXT NOT NULL,
            reason TEXT NOT NULL,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            released_by TEXT,
            released_at TEXT,
            release_reason TEXT)""",
        "CREATE INDEX IF NOT EXISTS holds_recording ON holds (recording_id, released_at)",
    ]


def _api_tokens(pg: bool) -> list[str]:
    """Personal API tokens (headoffice.apitokens): only the token's SHA-256 is kept. A
    token acts as ``name`` with that account's roles and scope at each request; it stops
    at ``expires_at``, at ``revoked_at`` (rows are kept: who had which token, and when)
    and while the account is disabled."""
    del pg  # the same DDL on both backends
    return [
        """CREATE TABLE IF NOT EXISTS api_tokens (
            token_sha256 TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES users (name),
            label TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT)""",
        "CREATE INDEX IF NOT EXISTS api_tokens_name ON api_tokens (name, created_at)",
    ]


def _retention_locks() -> list[str]:
    """The retention date the blob store was last told to enforce for each recording
    (headoffice.purge.lock_mandatory): its mandatory retention (the governing policy's
    ``min_days``), so the daily run asks the store again only where it changed."""
    return [
        """CREATE TABLE IF NOT EXISTS retention_locks (
            recording_id TEXT PRIMARY KEY,
            retain_until TEXT NOT NULL)""",
    ]


#: Fleet health's tables (headoffice.fleet.state).
FLEET_TABLES = ("fleet_devices", "fleet_lines", "fleet_device_hours", "fleet_line_hours",
                "fleet_alarms")  # fmt: skip


def _fleet(pg: bool) -> list[str]:
    """Fleet health (headoffice.fleet): each device's latest telemetry (``status``: the
    checked document as canonical JSON) and verified head, each line's latest state,
    hourly rollups (hours as ``YYYY-MM-DDTHH:00:00+00:00``; a line's by its calls' start,
    rolled up once per recording: ``rolled_until`` is the last ``stored_at`` counted), and
    the alarms: ``state`` pending (seen, not yet held ``raise_after_s``), raised,
    acknowledged or cleared; at most one not cleared per device, line (NULL: the whole
    device) and kind, which the unique index keeps true across workers."""
    boolean = "BOOLEAN" if pg else "INTEGER"
    return [
        f"""CREATE TABLE IF NOT EXISTS fleet_devices (
            device_id TEXT PRIMARY KEY,
            online {boolean} NOT NULL,
            state_since TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            device_time_utc TEXT,
            status_sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            head_seq BIGINT,
            head_manifest_sha256 TEXT,
            head_recording_id TEXT,
            head_signed_at TEXT,
            rolled_until TEXT)""",
        """CREATE TABLE IF NOT EXISTS fleet_lines (
            device_id TEXT NOT NULL,
            line TEXT NOT NULL,
            state TEXT,
            led TEXT,
            levels TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (device_id, line))""",
        """CREATE TABLE IF NOT EXISTS fleet_device_hours (
            device_id TEXT NOT NULL,
            hour TEXT NOT NULL,
            messages BIGINT NOT NULL,
            online_s BIGINT NOT NULL,
            max_backlog BIGINT,
            max_oldest_unacked_s BIGINT,
            min_disk_free_bytes BIGINT,
            PRIMARY KEY (device_id, hour))""",
        """CREATE TABLE IF NOT EXISTS fleet_line_hours (
            device_id TEXT NOT NULL,
            line TEXT NOT NULL,
            hour TEXT NOT NULL,
            calls BIGINT NOT NULL,
            judged_calls BIGINT NOT NULL,
            silent_calls BIGINT NOT NULL,
            hum_calls BIGINT NOT NULL,
            clipped_calls BIGINT NOT NULL,
            PRIMARY KEY (device_id, line, hour))""",
        f"""CREATE TABLE IF NOT EXISTS fleet_alarms (
            id {_serial(pg)},
            device_id TEXT NOT NULL,
            line TEXT,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            first_seen_at TEXT NOT NULL,
            first_raised_at TEXT,
            last_seen_at TEXT NOT NULL,
            absent_since TEXT,
            cleared_at TEXT,
            count BIGINT NOT NULL,
            detail TEXT NOT NULL,
            acked_by TEXT,
            acked_at TEXT,
            ack_note TEXT)""",
        """CREATE UNIQUE INDEX IF NOT EXISTS fleet_alarms_open
            ON fleet_alarms (device_id, (COALESCE(line, '')), kind) WHERE state <> 'cleared'""",
        "CREATE INDEX IF NOT EXISTS fleet_alarms_device ON fleet_alarms (device_id, kind, id)",
        "CREATE INDEX IF NOT EXISTS fleet_alarms_state ON fleet_alarms (state, id)",
    ]


#: The notification outbox (headoffice.notify.outbox).
NOTIFY_TABLES = ("notifications", "deliveries")


def _notify(pg: bool) -> list[str]:
    """The notification outbox (headoffice.notify.outbox): every notification (its JSON
    in ``payload``; kind, device, line, alarm and times as columns for the digest and the
    latency figures) and one delivery per notification and channel, whose ``state`` goes
    pending -> sent, or pending -> failed (retried at ``next_attempt_at``; NULL: not
    retried) -> sent. ``claimed_until``: a dispatcher is sending it (a lapsed claim is
    sent again). Rows are kept: the history of what was sent when."""
    del pg  # the same DDL on both backends
    return [
        """CREATE TABLE IF NOT EXISTS notifications (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            device_id TEXT NOT NULL,
            line TEXT,
            alarm TEXT NOT NULL,
            severity TEXT NOT NULL,
            summary TEXT NOT NULL,
            raised_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            payload TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS notifications_kind ON notifications (kind, raised_at)",
        """CREATE TABLE IF NOT EXISTS deliveries (
            notification_id TEXT NOT NULL REFERENCES notifications (id),
            channel TEXT NOT NULL CHECK (channel IN ('email', 'webhook')),
            state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            claimed_until TEXT,
            last_attempt_at TEXT,
            last_error TEXT,
            last_error_at TEXT,
            sent_at TEXT,
            message_id TEXT,
            PRIMARY KEY (notification_id, channel))""",
        """CREATE INDEX IF NOT EXISTS deliveries_due
            ON deliveries (channel, state, next_attempt_at)""",
        "CREATE INDEX IF NOT EXISTS deliveries_sent ON deliveries (channel, sent_at)",
    ]
