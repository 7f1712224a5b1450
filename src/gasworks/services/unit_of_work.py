"""The unit of work a use case runs in. The SQL one lives in adapters; services see this shape."""

from typing import Protocol

from gasworks.adapters.db import repositories as repos
from gasworks.domain.clock import Clock


class UnitOfWork(Protocol):
    clock: Clock
    customers: repos.Customers
    channels: repos.Channels
    ledger: repos.Ledger
    orders: repos.Orders
    payments: repos.Payments
    nonces: repos.Nonces
    rejections: repos.Rejections
    api_keys: repos.ApiKeys
    audit: repos.AuditLog

    def __enter__(self) -> "UnitOfWork": ...
    def __exit__(self, *exc: object) -> None: ...
    def commit(self) -> None: ...
