"""A seeded, deterministic city: communities, kiosks, households with meters and habits.

The same seed gives the same city. Coordinates are around Hengyang (衡阳), Hunan; consumption is a
household's daily gas in litres, higher in winter (heating water, hot pot) and at weekends.
"""

import random
from dataclasses import dataclass, field
from datetime import date

from gasworks.domain.accounts import MeterKind
from gasworks.domain.meter_models import BUILT_IN_MODELS
from gasworks.sim.meter import SimulatedMeter

CITY_CENTRE = (26.8936, 112.5720)
HOUSEHOLDS_PER_COMMUNITY = 200
STREET_NAMES = ("蒸湘", "雁峰", "石鼓", "珠晖", "华新", "解放", "船山", "衡州", "岳屏", "先锋")
SUFFIXES = ("苑", "小区", "家园", "花园")
CHANNELS = ("wo-wallet", "wechat", "alipay", "kiosk", "counter")
CHANNEL_WEIGHTS_IOT = (25, 35, 25, 5, 10)  # IoT residents pay from their phones
CHANNEL_WEIGHTS_CARD = (10, 20, 15, 40, 15)  # card residents must visit a kiosk anyway
TOP_UPS_FEN = (5_000, 10_000, 10_000, 20_000, 30_000)
# The IoT meters' models (domain/meter_models.py), and their shares: an assumption for a city that
# bought meters from several vendors over the years (no public figure for the mix).
IOT_MODEL_WEIGHTS = {"cjt188-sm4": 50, "cjt188-aes": 15, "cjt188-money": 35}
MONEY_METER_PRICE_FEN_PER_M3 = 2_990  # what a money meter charges itself per m³: the seeded residential tier-1 price
KIOSK_OPENING_HOURS = "07:00-22:00"  # a usual 圈存 kiosk in a compound's property office (assumption)


@dataclass
class Card:
    card_no: str
    purchase_seq: int = 0  # the last purchase serial written to it
    meter_applied_seq: int = 0  # what the meter wrote back the last time the card was inserted
    pending: list[tuple[int, int]] = field(default_factory=list)  # (serial, litres) written, not yet in the meter


@dataclass
class Community:
    name: str
    centre: tuple[float, float]
    kiosk_id: str | None


@dataclass
class Household:
    account_no: str
    name: str
    kind: MeterKind
    community: Community
    location: tuple[float, float]
    channel: str  # the resident's preferred way to pay
    litres_per_day: int  # an ordinary day's use
    wake_second: int  # IoT: seconds after local midnight when the meter reports
    top_up_fen: int
    meter: SimulatedMeter
    card: Card | None = None
    model: str | None = None  # IoT: the meter model profile it was bought as

    @property
    def model_label(self) -> str:
        return self.model or "card"

    @property
    def serial(self) -> str:
        return self.meter.serial


@dataclass
class City:
    seed: int
    communities: list[Community]
    households: list[Household]

    @property
    def kiosks(self) -> list[Community]:
        return [c for c in self.communities if c.kiosk_id]


def season_factor_percent(day: date) -> int:
    """Winter months burn more: 160 % in January, 70 % in July (integer percent, applied to litres)."""
    return {1: 160, 2: 150, 3: 125, 4: 100, 5: 85, 6: 75, 7: 70, 8: 70, 9: 80, 10: 95, 11: 120, 12: 150}[day.month]


def build_city(households: int, *, seed: int, iot_percent: int = 60) -> City:
    rng = random.Random(seed)
    models = random.Random(seed * 104_729 + 7)  # a generator of its own: the rest of the city stays what the seed always gave
    n_communities = max(1, -(-households // HOUSEHOLDS_PER_COMMUNITY))
    communities = []
    for i in range(n_communities):
        centre = (CITY_CENTRE[0] + rng.uniform(-0.06, 0.06), CITY_CENTRE[1] + rng.uniform(-0.06, 0.06))
        has_kiosk = i == 0 or rng.random() < 0.7  # most compounds have a 圈存 kiosk; some send people next door
        name = f"{STREET_NAMES[i % len(STREET_NAMES)]}{SUFFIXES[i // len(STREET_NAMES) % len(SUFFIXES)]}{i // 40 + 1}期"
        communities.append(Community(name, centre, f"k-{i:04d}" if has_kiosk else None))
    city_households = []
    for i in range(households):
        community = communities[i % n_communities]
        kind = MeterKind.IOT if rng.randrange(100) < iot_percent else MeterKind.CARD
        channel = rng.choices(CHANNELS, CHANNEL_WEIGHTS_IOT if kind == MeterKind.IOT else CHANNEL_WEIGHTS_CARD)[0]
        serial = f"{30_000_000_000_000 + i:014d}"
        start_credit = rng.randrange(2_000, 25_000)
        household = Household(
            account_no=f"43{i:08d}",
            name=rng.choice("王李张刘陈杨黄赵周吴") + rng.choice(("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋")),
            kind=kind,
            community=community,
            location=(community.centre[0] + rng.uniform(-0.004, 0.004), community.centre[1] + rng.uniform(-0.004, 0.004)),
            channel=channel,
            litres_per_day=rng.randrange(300, 1_400),
            wake_second=rng.randrange(0, 86_400),
            top_up_fen=rng.choice(TOP_UPS_FEN),
            meter=SimulatedMeter(serial, credit_litres=start_credit, battery_mv=rng.randrange(3_300, 3_700)),
            card=Card(f"IC{i:010d}") if kind == MeterKind.CARD else None,
        )
        if kind == MeterKind.IOT:
            household.model = models.choices(list(IOT_MODEL_WEIGHTS), list(IOT_MODEL_WEIGHTS.values()))[0]
            meter = household.meter
            meter.model = BUILT_IN_MODELS[household.model]
            meter.seq_modulus = meter.model.seq_modulus
            if meter.model.is_money_meter:
                meter.price_fen_per_m3 = MONEY_METER_PRICE_FEN_PER_M3
                meter.credit_fen = start_credit * MONEY_METER_PRICE_FEN_PER_M3 // 1000
        city_households.append(household)
    return City(seed, communities, city_households)
