"""events: PostgreSQL announces every new event with NOTIFY (the API's watch feed listens)

An ``AFTER INSERT`` row trigger on ``events`` runs
``pg_notify('sandgate_events', NEW.id::text)``. PostgreSQL delivers a
notification only when the inserting transaction commits (and drops it when
it rolls back), so a listener never hears of an event it cannot read yet:
whoever writes an event — a pointer move, an evaluation, a canary decision —
announces it in the same transaction, without any code of its own.

PostgreSQL only: on SQLite this revision does nothing (the feed polls there).
Safe on existing data: a function and a trigger, no table change.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the channel (frozen here; sandgate.store.audit.EVENTS_CHANNEL names the same one)
CHANNEL = "sandgate_events"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE OR REPLACE FUNCTION sandgate_notify_event() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.id::text);
            RETURN NULL;
        END
        $$
    """)
    op.execute("DROP TRIGGER IF EXISTS events_notify ON events")
    op.execute("CREATE TRIGGER events_notify AFTER INSERT ON events "
               "FOR EACH ROW EXECUTE FUNCTION sandgate_notify_event()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS events_notify ON events")
    op.execute("DROP FUNCTION IF EXISTS sandgate_notify_event()")
