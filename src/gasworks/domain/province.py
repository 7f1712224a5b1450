"""A province: a group of city utilities, each with its own database (a shard).

An account number says its city: its first four digits are the city's code (the province's two
digits and the city's two, as China's administrative division codes run: 4103 is Luoyang, Henan).
A channel belongs to one city's utility (each city holds its own merchant accounts), so a channel
id says its city too. Nothing else crosses cities: a payment, its ledger entries, the meter and its
commands all live in the city's shard, so one city's database going down stops that city only.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gasworks.domain.errors import InvalidInput, NotFound

CITY_CODE = re.compile(r"^[0-9]{4}$")
CITY_CODE_DIGITS = 4
CITIES_MAX = 100  # a province's cities; a bound on processes and connection pools in one deployment


class UnknownCity(NotFound):
    code = "UNKNOWN_CITY"


@dataclass(frozen=True)
class City:
    code: str  # four digits, the prefix of every account number of the city
    name: str
    channel_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Province:
    cities: tuple[City, ...]
    _by_code: dict[str, City] = field(init=False, repr=False, compare=False)
    _by_channel: dict[str, City] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.cities) <= CITIES_MAX:
            raise InvalidInput(f"a province has 1 to {CITIES_MAX} cities, got {len(self.cities)}", code="INVALID_PROVINCE")
        by_code: dict[str, City] = {}
        by_channel: dict[str, City] = {}
        for city in self.cities:
            if not CITY_CODE.match(city.code):
                raise InvalidInput(f"a city code is {CITY_CODE_DIGITS} digits, got {city.code!r}", code="INVALID_PROVINCE")
            if city.code in by_code:
                raise InvalidInput(f"city {city.code} is listed twice", code="INVALID_PROVINCE")
            by_code[city.code] = city
            for channel_id in city.channel_ids:
                if channel_id in by_channel:
                    raise InvalidInput(f"channel {channel_id!r} belongs to both {by_channel[channel_id].code} and {city.code}", code="INVALID_PROVINCE")
                by_channel[channel_id] = city
        object.__setattr__(self, "_by_code", by_code)
        object.__setattr__(self, "_by_channel", by_channel)

    def city(self, code: str) -> City:
        found = self._by_code.get(code)
        if found is None:
            raise UnknownCity(f"no city {code[:20]!r} in this province (cities: {', '.join(self._by_code)})")
        return found

    def city_of_account(self, account_no: str) -> City:
        """The city an account number says; an account of a city not in the province is unknown."""
        return self.city(account_no[:CITY_CODE_DIGITS])

    def city_of_channel(self, channel_id: str) -> City:
        found = self._by_channel.get(channel_id)
        if found is None:
            raise UnknownCity(f"channel {channel_id[:40]!r} belongs to no city of this province", code="UNKNOWN_CHANNEL")
        return found


@dataclass(frozen=True)
class PaymentsTaken:
    """A city's payments received in a period, by state."""

    by_state: dict[str, tuple[int, int]]  # state → (count, fen)

    @property
    def count(self) -> int:
        return sum(n for n, _ in self.by_state.values())

    @property
    def fen(self) -> int:
        return sum(fen for _, fen in self.by_state.values())


@dataclass(frozen=True)
class TimeToGas:
    """From a payment received to its gas available at the meter, over a period's purchases."""

    purchases: int
    applied: int  # purchases whose meter has applied them
    p50_s: int | None
    p90_s: int | None
    max_s: int | None

    @classmethod
    def of(cls, waits_s: Iterable[int | None]) -> "TimeToGas":
        waits = list(waits_s)
        applied = sorted(w for w in waits if w is not None)
        return cls(len(waits), len(applied), nearest_rank(applied, 50), nearest_rank(applied, 90), applied[-1] if applied else None)


@dataclass(frozen=True)
class CityFigures:
    code: str
    name: str
    payments: PaymentsTaken
    time_to_gas: TimeToGas
    accounts_in_arrears: int
    arrears_fen: int


@dataclass(frozen=True)
class CityUnavailable:
    code: str
    name: str
    reason: str


def nearest_rank(sorted_values: Sequence[int], percent: int) -> int | None:
    """The nearest-rank percentile of integers already sorted: a value that occurred, never interpolated."""
    if not sorted_values:
        return None
    rank = max(1, -(-percent * len(sorted_values) // 100))  # ceil(percent/100 × n)
    return sorted_values[rank - 1]
