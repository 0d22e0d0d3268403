"""The fast-path head (read from the migration files) is Alembic's head."""

from __future__ import annotations

import subprocess
import sys

from sandgate.store.migrate import head_revision, scripted_head


def test_scripted_head_is_alembics_head() -> None:
    assert scripted_head() == head_revision()


def test_opening_a_migrated_store_does_not_import_alembic(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    code = (
        "import sys\n"
        "from sandgate.store import open_store\n"
        f"open_store({url!r}).close()\n"          # first open migrates (imports Alembic)
        "print('alembic' in sys.modules)\n"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"
    assert again.stdout.strip() == "False"
