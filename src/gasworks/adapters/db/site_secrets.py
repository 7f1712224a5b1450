"""Secrets made once per installation (e.g. what signs residents' page links)."""

import secrets
from datetime import datetime

from sqlalchemy import Connection, select

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.repositories import insert_unless_taken


class SiteSecrets:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def get_or_create(self, name: str, at: datetime) -> str:
        """A random secret made once per installation (the first caller's wins, also under a race)."""
        self.c.execute(insert_unless_taken(self.c, t.site_secrets).values(name=name, value=secrets.token_urlsafe(32), created_at=at))
        return self.c.execute(select(t.site_secrets.c.value).where(t.site_secrets.c.name == name)).scalar_one()
