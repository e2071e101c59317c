"""The generative model of one day of card traffic, vectorised with numpy.

``simulate_day`` draws a whole UTC day at once: genuine transactions (diurnal and
weekly intensity, favourite merchants, the account's spend level) plus fraud
incidents with ground truth, and the late labels they will produce. The history
writer turns days into Arrow tables; the live stream turns the same days into JSON
dicts, so both see the same events for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import numpy.typing as npt

from streams.simulate.exceptions import SimulationError
from streams.simulate.population import (
    ATM,
    ATO_MCCS,
    CATEGORIES,
    COUNTRIES,
    COUNTRY_INDEX,
    ECOM,
    POS,
    RECURRING,
    RISKY_COUNTRIES,
    STOLEN_CARD_MCCS,
    Population,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# Cardholders live on Central European time; diurnal patterns are drawn in local time.
LOCAL_UTC_OFFSET_HOURS = 1

# Relative intensity per local hour: quiet nights, lunch and evening peaks.
DIURNAL = np.array(
    [0.9, 0.5, 0.3, 0.2, 0.2, 0.4, 1.2, 2.8, 4.2, 5.0, 5.6, 6.2,
     7.0, 6.6, 5.9, 5.7, 6.0, 6.8, 7.2, 6.5, 5.0, 3.6, 2.4, 1.5]
)  # fmt: skip
DIURNAL_P = DIURNAL / DIURNAL.sum()
# Monday .. Sunday multipliers of the daily volume.
WEEKLY = np.array([0.95, 0.97, 1.0, 1.02, 1.12, 1.15, 0.79])

# Fraud scenarios: code -> label.v1 fraud_type. Code 0 is genuine.
SCENARIOS = ("card_testing", "account_takeover", "foreign_high_amount", "stolen_card")
GENUINE = 0
CARD_TESTING, ACCOUNT_TAKEOVER, FOREIGN_HIGH_AMOUNT, STOLEN_CARD = 1, 2, 3, 4
# Share of fraud *events* per scenario, events per incident (min, max), gap between them.
_SCENARIO_SHARE = np.array([0.35, 0.25, 0.2, 0.2])
_INCIDENT_SIZE = ((3, 12), (1, 3), (1, 2), (2, 5))
_GAP_MEAN_MS = (40_000, 10 * 60_000, 30 * 60_000, 20 * 60_000)

CHANNELS = ("pos", "ecommerce", "atm", "moto", "recurring")
ENTRY_MODES = ("chip", "contactless", "magstripe", "manual", "ecommerce", "token")
CH_POS, CH_ECOM, CH_ATM, CH_MOTO, CH_RECURRING = range(5)
EM_CHIP, EM_CONTACTLESS, EM_MAGSTRIPE, EM_MANUAL, EM_ECOMMERCE, EM_TOKEN = range(6)
LABEL_SOURCES = ("chargeback", "customer_report", "analyst_review")
SRC_CHARGEBACK, SRC_CUSTOMER, SRC_ANALYST = range(3)

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_SLOTS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


@dataclass(frozen=True, eq=False)
class DayEvents:
    """One UTC day of transactions, sorted by time, as parallel arrays."""

    day: date
    time_ms: I64  # epoch milliseconds
    account: I64
    card: I64
    merchant: I64
    amount: F64  # in the card's currency, 2 decimals
    channel: I64
    entry_mode: I64
    device: I64  # index into devices, -1 when none
    ip: I64  # index into ips, -1 when none
    is_3ds: npt.NDArray[np.bool_]
    card_present: npt.NDArray[np.bool_]
    geo_lat: F64  # NaN when no geo
    geo_lon: F64
    scenario: I64  # GENUINE or a fraud scenario code
    event_id: U8  # (n, 36) ASCII UUIDs
    devices: tuple[str, ...]  # population devices + fraudsters' new devices
    ips: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.time_ms)


@dataclass(frozen=True, eq=False)
class DayLabels:
    """Late labels produced by one day's transactions (label times may lie in later days)."""

    row: I64  # index into the day's DayEvents
    time_ms: I64
    is_fraud: npt.NDArray[np.bool_]
    source: I64
    fraud_type: I64  # scenario code, GENUINE -> null
    chargeback_amount: F64  # NaN -> null
    event_id: U8

    def __len__(self) -> int:
        return len(self.row)


def uuid4_ascii(rng: np.random.Generator, n: int) -> U8:
    """``n`` random version-4 UUIDs as an (n, 36) array of lower-case ASCII."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, _UUID_SLOTS] = digits
    return out


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def check_fraud_rate(fraud_rate: float) -> None:
    if not 0.0 <= fraud_rate < 0.5:
        raise SimulationError(f"fraud rate must be in [0, 0.5), got {fraud_rate}")


def _time_of_day_ms(rng: np.random.Generator, shift_hours: F64) -> I64:
    """Local diurnal draw shifted per account, returned as ms since UTC midnight."""
    n = len(shift_hours)
    hour = rng.choice(24, size=n, p=DIURNAL_P).astype(np.float64)
    local_h = hour + rng.random(n) + shift_hours
    utc_ms = ((local_h - LOCAL_UTC_OFFSET_HOURS) * HOUR_MS).astype(np.int64)
    return np.mod(utc_ms, DAY_MS)


def _fraud_start_ms(rng: np.random.Generator, n: int) -> I64:
    """Fraudsters work at night more than cardholders do: 55% between 0 and 6 local."""
    night = rng.random(n) < 0.55
    local_h = np.where(night, rng.random(n) * 6.0, rng.random(n) * 24.0)
    return np.mod(((local_h - LOCAL_UTC_OFFSET_HOURS) * HOUR_MS).astype(np.int64), DAY_MS)


def simulate_day(
    population: Population, day: date, fraud_rate: float = 0.005
) -> tuple[DayEvents, DayLabels]:
    """Every transaction of ``day`` (UTC) and the labels they will get.

    Deterministic in (population seed and size, day, fraud rate): a day drawn by the
    history writer and by the live stream is the same day.
    """
    check_fraud_rate(fraud_rate)
    pop = population
    rng = np.random.default_rng([pop.seed, pop.accounts, day.toordinal(), 1])
    fx = np.array([c.fx_per_eur for c in COUNTRIES])

    # --- genuine traffic -------------------------------------------------------------
    counts = rng.poisson(pop.rate * WEEKLY[day.weekday()])
    account = np.repeat(np.arange(pop.accounts, dtype=np.int64), counts)
    n = len(account)
    time_ms = _time_of_day_ms(rng, pop.hour_shift[account])
    card = pop.card_start[account] + (rng.random(n) * pop.card_count[account]).astype(np.int64)
    home = pop.home[account]
    # Mostly the account's favourite local merchants (a geometric tail), sometimes travel.
    rank = rng.geometric(0.15, n) - 1
    size = np.maximum(pop.country_count[home], 1)
    local = pop.country_merchants[
        pop.country_start[home]
        + (pop.favourite_base[account] + rank * pop.favourite_stride[account]) % size
    ]
    travel = rng.random(n) < 0.04
    merchant = np.where(travel, rng.integers(0, pop.merchants, n), local)
    kind = pop.merchant_kind[merchant]
    amount_eur = pop.merchant_ticket[merchant] * pop.spend[account] * np.exp(rng.normal(0, 0.45, n))
    amount_eur = np.where(
        kind == ATM, np.maximum(20.0, np.round(amount_eur / 20.0) * 20.0), amount_eur
    )
    channel = np.select(
        [kind == POS, kind == ECOM, kind == ATM], [CH_POS, CH_ECOM, CH_ATM], CH_RECURRING
    ).astype(np.int64)
    u = rng.random(n)
    entry_mode = np.select(
        [kind == POS, kind == ECOM, kind == ATM],
        [
            np.where(u < 0.6, EM_CONTACTLESS, np.where(u < 0.97, EM_CHIP, EM_MAGSTRIPE)),
            np.where(u < 0.8, EM_ECOMMERCE, EM_TOKEN),
            EM_CHIP,
        ],
        EM_TOKEN,
    ).astype(np.int64)
    remote = (kind == ECOM) | (kind == RECURRING)
    own_device = pop.device_start[account] + (rng.random(n) * pop.device_count[account]).astype(
        np.int64
    )
    device = np.where(remote, own_device, -1)
    is_3ds = (kind == ECOM) & (rng.random(n) < 0.75)
    card_present = (kind == POS) | (kind == ATM)
    scenario = np.zeros(n, dtype=np.int64)

    # --- fraud incidents ---------------------------------------------------------------
    target = fraud_rate / (1.0 - fraud_rate) * n
    mean_size = np.array([(a + b) / 2 for a, b in _INCIDENT_SIZE])
    incidents = rng.poisson(target * _SCENARIO_SHARE / mean_size)
    inc_scenario = np.repeat(np.arange(1, 5, dtype=np.int64), incidents)
    inc_size = np.concatenate(
        [rng.integers(a, b + 1, k) for (a, b), k in zip(_INCIDENT_SIZE, incidents, strict=True)]
    ).astype(np.int64)
    inc_account = rng.integers(0, pop.accounts, len(inc_scenario))
    inc_card = pop.card_start[inc_account] + (
        rng.random(len(inc_account)) * pop.card_count[inc_account]
    ).astype(np.int64)
    inc_start = _fraud_start_ms(rng, len(inc_scenario))
    inc_foreign = rng.choice(
        np.array([COUNTRY_INDEX[c] for c in RISKY_COUNTRIES]), len(inc_scenario)
    )
    f_inc = np.repeat(np.arange(len(inc_scenario)), inc_size)
    m = len(f_inc)
    f_scenario = inc_scenario[f_inc]
    f_account = inc_account[f_inc]
    gap_mean = np.array((0, *_GAP_MEAN_MS), dtype=np.float64)[f_scenario]
    gaps = rng.exponential(1.0, m) * gap_mean
    first_of_incident = np.r_[True, f_inc[1:] != f_inc[:-1]] if m else np.zeros(0, bool)
    gaps[first_of_incident] = 0.0
    cum = np.cumsum(gaps)
    offset = cum - np.maximum.accumulate(np.where(first_of_incident, cum, 0.0)) if m else cum
    f_time = np.minimum(inc_start[f_inc] + offset.astype(np.int64), DAY_MS - 1)

    mcc = np.array([c.mcc for c in CATEGORIES])[pop.merchant_category]
    ecom_pool = pop.pool(pop.merchant_kind == ECOM)
    risky_pool = pop.pool(pop.merchant_risky)
    ato_pool = pop.pool(np.isin(mcc, ATO_MCCS))
    stolen_pool = pop.pool(np.isin(mcc, STOLEN_CARD_MCCS) | (pop.merchant_kind == ATM))
    foreign_pool = pop.pool(
        np.isin(pop.merchant_country, [COUNTRY_INDEX[c] for c in RISKY_COUNTRIES])
        & (pop.merchant_kind != RECURRING)
    )

    def pick(pool: I64) -> I64:
        return pool[rng.integers(0, len(pool), m)]

    f_merchant = np.select(
        [
            f_scenario == CARD_TESTING,
            f_scenario == ACCOUNT_TAKEOVER,
            f_scenario == FOREIGN_HIGH_AMOUNT,
        ],
        [
            np.where(rng.random(m) < 0.8, pick(risky_pool), pick(ecom_pool)),
            np.where(rng.random(m) < 0.4, pick(risky_pool), pick(ato_pool)),
            pick(foreign_pool),
        ],
        pick(stolen_pool),
    )
    f_kind = pop.merchant_kind[f_merchant]
    level = pop.spend[f_account] * 50.0  # the account's usual ticket, in EUR
    f_amount_eur = np.select(
        [
            f_scenario == CARD_TESTING,
            f_scenario == ACCOUNT_TAKEOVER,
            f_scenario == FOREIGN_HIGH_AMOUNT,
        ],
        [rng.uniform(0.5, 3.0, m), level * rng.uniform(6, 25, m), level * rng.uniform(8, 30, m)],
        level * rng.uniform(3, 12, m),
    )
    f_amount_eur = np.where(
        f_kind == ATM, np.maximum(50.0, np.round(f_amount_eur / 50.0) * 50.0), f_amount_eur
    )
    f_remote = f_kind != POS
    f_remote &= f_kind != ATM
    f_channel = np.select([f_kind == POS, f_kind == ATM], [CH_POS, CH_ATM], CH_ECOM).astype(
        np.int64
    )
    v = rng.random(m)
    f_entry = np.select(
        [f_kind == ATM, f_kind == POS, f_scenario == FOREIGN_HIGH_AMOUNT],
        [
            EM_MAGSTRIPE,
            np.where(v < 0.5, EM_MAGSTRIPE, EM_CONTACTLESS),
            np.where(v < 0.5, EM_MANUAL, EM_ECOMMERCE),
        ],
        np.where(v < 0.9, EM_ECOMMERCE, EM_TOKEN),
    ).astype(np.int64)
    f_3ds = f_remote & (f_scenario == ACCOUNT_TAKEOVER) & (rng.random(m) < 0.25)
    # Remote fraud comes from a device and an IP the account never used (one per incident).
    n_pop_devices = len(pop.device_ids)
    inc_device_hex = rng.integers(0, 2**48, len(inc_scenario))
    new_devices = tuple(f"dev_x{h:012x}" for h in inc_device_hex.tolist())
    f_device = np.where(f_remote, n_pop_devices + f_inc, -1)
    octets = rng.integers(1, 255, (len(inc_scenario), 3)).tolist()
    first_octet = np.array([c.ip_octet for c in COUNTRIES])[inc_foreign].tolist()
    new_ips = tuple(f"{a}.{b}.{c}.{d}" for a, (b, c, d) in zip(first_octet, octets, strict=True))

    # --- merge, sort by time ----------------------------------------------------------
    all_time = np.concatenate([time_ms, f_time])
    order = np.argsort(all_time, kind="stable")
    acct = np.concatenate([account, f_account])[order]
    merch = np.concatenate([merchant, f_merchant])[order]
    card_all = np.concatenate([card, inc_card[f_inc]])[order]
    amount = np.round(np.concatenate([amount_eur, f_amount_eur])[order] * fx[pop.home[acct]], 2)
    amount = np.clip(amount, 0.01, 999_999.0)
    dev = np.concatenate([device, f_device])[order]
    # A device's IP is the population's for own devices and the fraudster's for new ones.
    ip = dev.copy()
    present = np.concatenate([card_present, ~f_remote])[order]
    with_geo = present & (rng.random(len(order)) < 0.9)
    lat = np.where(with_geo, pop.merchant_lat[merch] + rng.normal(0, 0.01, len(order)), np.nan)
    lon = np.where(with_geo, pop.merchant_lon[merch] + rng.normal(0, 0.01, len(order)), np.nan)
    events = DayEvents(
        day=day,
        time_ms=all_time[order] + day_start_ms(day),
        account=acct,
        card=card_all,
        merchant=merch,
        amount=amount,
        channel=np.concatenate([channel, f_channel])[order],
        entry_mode=np.concatenate([entry_mode, f_entry])[order],
        device=dev,
        ip=ip,
        is_3ds=np.concatenate([is_3ds, f_3ds])[order],
        card_present=present,
        geo_lat=np.clip(lat, -90, 90),
        geo_lon=np.clip(lon, -180, 180),
        scenario=np.concatenate([scenario, f_scenario])[order],
        event_id=uuid4_ascii(rng, len(order)),
        devices=pop.device_ids + new_devices,
        ips=pop.device_ips + new_ips,
    )
    return events, _labels(rng, pop, events)


def _labels(rng: np.random.Generator, pop: Population, events: DayEvents) -> DayLabels:
    """Fraud gets labelled late (chargebacks after 5-60 days); analysts clear a few genuine."""
    fraud_rows = np.flatnonzero(events.scenario != GENUINE)
    ct = events.scenario[fraud_rows] == CARD_TESTING
    u = rng.random(len(fraud_rows))
    # Tiny card-testing amounts are not worth a chargeback: analysts and customers flag them.
    source = np.where(
        ct,
        np.where(u < 0.6, SRC_ANALYST, SRC_CUSTOMER),
        np.where(u < 0.7, SRC_CHARGEBACK, SRC_CUSTOMER),
    )
    delay_days = np.select(
        [source == SRC_CHARGEBACK, source == SRC_CUSTOMER],
        [rng.uniform(5, 60, len(fraud_rows)), rng.uniform(1, 10, len(fraud_rows))],
        rng.uniform(0.1, 3, len(fraud_rows)),
    )
    genuine = np.flatnonzero(events.scenario == GENUINE)
    usual = pop.spend[events.account[genuine]] * 50.0
    big = events.amount[genuine] > 4 * usual  # analysts look at large amounts first
    reviewed = genuine[rng.random(len(genuine)) < np.where(big, 0.01, 0.0005)]
    rows = np.concatenate([fraud_rows, reviewed])
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    n_fraud = len(fraud_rows)
    is_fraud = (np.arange(len(order)) < n_fraud)[order]
    src = np.concatenate([source, np.full(len(reviewed), SRC_ANALYST)])[order]
    delay = np.concatenate([delay_days, rng.uniform(0.5, 7, len(reviewed))])[order]
    return DayLabels(
        row=rows.astype(np.int64),
        time_ms=events.time_ms[rows] + (delay * DAY_MS).astype(np.int64),
        is_fraud=is_fraud,
        source=src.astype(np.int64),
        fraud_type=np.where(is_fraud, events.scenario[rows], GENUINE),
        chargeback_amount=np.where(src == SRC_CHARGEBACK, events.amount[rows], np.nan),
        event_id=uuid4_ascii(rng, len(rows)),
    )
