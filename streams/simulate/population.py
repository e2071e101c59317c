"""Who transacts where: a seeded population of accounts, cards, devices and merchants.

Everything is numpy arrays indexed by integer ids, so the vectorised history writer
and the live stream draw from the same population. Ids are strings derived only from
the index (``acc_000123``, ``card_000123_1``, ``m_00042``, ``dev_000123_0``), so the
same ``accounts`` and ``seed`` give the same ids in history and live traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from streams.simulate.exceptions import SimulationError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    currency: str
    fx_per_eur: float  # card currency units per EUR: amounts are billed in the card's currency
    lat: float
    lon: float
    ip_octet: int  # first IPv4 octet of the (made-up) national address block


COUNTRIES: tuple[Country, ...] = (
    Country("DE", "EUR", 1.0, 51.2, 10.4, 84),
    Country("AT", "EUR", 1.0, 47.6, 14.1, 62),
    Country("FR", "EUR", 1.0, 46.6, 2.4, 90),
    Country("NL", "EUR", 1.0, 52.2, 5.3, 145),
    Country("PL", "PLN", 4.3, 52.1, 19.4, 83),
    Country("GB", "GBP", 0.85, 53.0, -1.5, 81),
    Country("CH", "CHF", 0.95, 46.8, 8.2, 178),
    Country("US", "USD", 1.08, 39.8, -98.6, 24),
    Country("ES", "EUR", 1.0, 40.2, -3.6, 88),
    Country("IT", "EUR", 1.0, 42.8, 12.6, 93),
    Country("BR", "BRL", 5.5, -10.3, -53.2, 177),
    Country("IN", "INR", 90.0, 22.0, 79.0, 117),
    Country("MX", "MXN", 19.0, 23.6, -102.5, 189),
    Country("ZA", "ZAR", 20.0, -29.0, 24.7, 196),
    Country("RO", "RON", 5.0, 45.9, 24.9, 86),
    Country("TR", "TRY", 35.0, 39.0, 35.2, 85),
)
COUNTRY_INDEX = {c.code: i for i, c in enumerate(COUNTRIES)}
# Cardholders of this (German) issuer: mostly at home, a minority living abroad.
HOME_WEIGHTS = {"DE": 0.85, "AT": 0.03, "FR": 0.02, "NL": 0.02, "PL": 0.02, "GB": 0.02,
                "CH": 0.02, "US": 0.02}  # fmt: skip
MERCHANT_WEIGHTS = {"DE": 0.62, "AT": 0.05, "FR": 0.05, "NL": 0.05, "PL": 0.03, "GB": 0.04,
                    "CH": 0.03, "US": 0.05, "ES": 0.03, "IT": 0.03, "BR": 0.004, "IN": 0.004,
                    "MX": 0.004, "ZA": 0.004, "RO": 0.004, "TR": 0.01}  # fmt: skip
# Countries where stolen card data is typically cashed out.
RISKY_COUNTRIES = ("BR", "IN", "MX", "ZA", "RO", "TR")

# Merchant kinds decide channel, entry mode and whether the card is present.
POS, ECOM, ATM, RECURRING = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Category:
    mcc: str
    kind: int
    ticket_eur: float  # typical ticket at a merchant of this category
    weight: float  # share of merchants
    name: str


CATEGORIES: tuple[Category, ...] = (
    Category("5411", POS, 35.0, 0.24, "Grocery"),
    Category("5812", POS, 30.0, 0.12, "Restaurant"),
    Category("5814", POS, 11.0, 0.08, "Snack Bar"),
    Category("5541", POS, 55.0, 0.07, "Fuel"),
    Category("5912", POS, 19.0, 0.05, "Pharmacy"),
    Category("5651", POS, 60.0, 0.05, "Fashion"),
    Category("4111", POS, 4.0, 0.04, "Transit"),
    Category("5944", POS, 280.0, 0.01, "Jeweller"),
    Category("6011", ATM, 100.0, 0.04, "ATM"),
    Category("5999", ECOM, 45.0, 0.13, "Web Shop"),
    Category("5732", ECOM, 170.0, 0.04, "Electronics"),
    Category("5815", ECOM, 12.0, 0.05, "Digital Goods"),
    Category("7011", ECOM, 150.0, 0.02, "Hotel"),
    Category("4511", ECOM, 240.0, 0.01, "Airline"),
    Category("4899", RECURRING, 13.0, 0.04, "Streaming"),
)
# Categories card-testing and account-takeover fraudsters favour.
ATO_MCCS = ("5732", "5815", "5999")
STOLEN_CARD_MCCS = ("5944", "6011", "5651")


@dataclass(frozen=True, eq=False)
class Population:
    """Accounts with their cards and devices, and merchants, as parallel arrays."""

    seed: int
    accounts: int
    # accounts
    home: I64  # index into COUNTRIES
    spend: F64  # multiplier of a merchant's typical ticket (the account's spend level)
    rate: F64  # expected transactions per day
    hour_shift: F64  # hours: early birds negative, night owls positive
    card_start: I64
    card_count: I64
    device_start: I64
    device_count: I64
    favourite_base: I64  # where in the home-country merchant list the favourites start
    favourite_stride: I64
    # cards and devices (flattened)
    card_ids: tuple[str, ...]
    card_account: I64
    device_ids: tuple[str, ...]
    device_ips: tuple[str, ...]
    # merchants
    merchant_ids: tuple[str, ...]
    merchant_names: tuple[str, ...]
    merchant_category: I64  # index into CATEGORIES
    merchant_kind: I64
    merchant_country: I64
    merchant_ticket: F64
    merchant_risky: BOOL
    merchant_lat: F64
    merchant_lon: F64
    # merchants grouped by country: country_merchants[country_start[c]:+country_count[c]]
    country_merchants: I64
    country_start: I64
    country_count: I64

    @property
    def account_ids(self) -> tuple[str, ...]:
        return tuple(account_id(i) for i in range(self.accounts))

    @property
    def merchants(self) -> int:
        return len(self.merchant_ids)

    def pool(self, mask: BOOL) -> I64:
        """Merchant indices where ``mask`` holds (never empty by construction)."""
        return np.flatnonzero(mask).astype(np.int64)


def account_id(index: int) -> str:
    return f"acc_{index:06d}"


def card_id(account: int, number: int) -> str:
    return f"card_{account:06d}_{number}"


def merchant_id(index: int) -> str:
    return f"m_{index:05d}"


def merchant_count(accounts: int) -> int:
    """How many merchants a population of ``accounts`` shops at."""
    return max(len(CATEGORIES) + len(RISKY_COUNTRIES) * 2, 400, accounts // 20)


def _weights(table: dict[str, float]) -> tuple[I64, F64]:
    codes = np.array([COUNTRY_INDEX[c] for c in table], dtype=np.int64)
    weights = np.array(list(table.values()), dtype=np.float64)
    return codes, weights / weights.sum()


@lru_cache(maxsize=4)
def build_population(accounts: int, seed: int) -> Population:
    """The population for ``accounts`` and ``seed``; identical inputs give identical output."""
    if accounts < 1:
        raise SimulationError(f"accounts must be at least 1, got {accounts}")
    if accounts > 99_999_999:
        raise SimulationError(f"accounts must be at most 99,999,999, got {accounts}")
    rng = np.random.default_rng([seed, accounts, 0])
    codes, weights = _weights(HOME_WEIGHTS)
    home = codes[rng.choice(len(codes), size=accounts, p=weights)]
    spend = np.exp(rng.normal(0.0, 0.5, accounts))
    # Activity is skewed: most accounts use the card every other day, a few many times a day.
    rate = np.exp(rng.normal(np.log(0.45), 0.7, accounts))
    hour_shift = np.clip(rng.normal(0.0, 1.2, accounts), -3.5, 3.5)
    card_count = rng.choice(np.array([1, 2, 3]), size=accounts, p=[0.6, 0.3, 0.1])
    device_count = rng.choice(np.array([1, 2, 3]), size=accounts, p=[0.5, 0.4, 0.1])
    card_start = np.concatenate([[0], np.cumsum(card_count)[:-1]]).astype(np.int64)
    device_start = np.concatenate([[0], np.cumsum(device_count)[:-1]]).astype(np.int64)
    card_account = np.repeat(np.arange(accounts, dtype=np.int64), card_count)
    card_number = np.arange(len(card_account)) - card_start[card_account] + 1
    device_account = np.repeat(np.arange(accounts, dtype=np.int64), device_count)
    device_number = np.arange(len(device_account)) - device_start[device_account]
    octets = rng.integers(0, 256, size=(len(device_account), 3))
    first = np.array([c.ip_octet for c in COUNTRIES])[home[device_account]]

    merchants = merchant_count(accounts)
    m_codes, m_weights = _weights(MERCHANT_WEIGHTS)
    merchant_country = m_codes[rng.choice(len(m_codes), size=merchants, p=m_weights)]
    cat_weights = np.array([c.weight for c in CATEGORIES])
    category = rng.choice(len(CATEGORIES), size=merchants, p=cat_weights / cat_weights.sum())
    # Small populations must still hold every category and foreign cash-out merchants.
    category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))
    merchant_country[: len(CATEGORIES)] = COUNTRY_INDEX["DE"]
    for i, code in enumerate(RISKY_COUNTRIES):
        merchant_country[len(CATEGORIES) + 2 * i : len(CATEGORIES) + 2 * i + 2] = COUNTRY_INDEX[
            code
        ]
    kind = np.array([c.kind for c in CATEGORIES])[category]
    ticket = np.array([c.ticket_eur for c in CATEGORIES])[category] * np.exp(
        rng.normal(0.0, 0.25, merchants)
    )
    # ~3% of web merchants are risky (weak KYC, resold goods); always a few.
    risky = (kind == ECOM) & (rng.random(merchants) < 0.03)
    risky[[i for i, c in enumerate(CATEGORIES) if c.mcc in ATO_MCCS]] = True
    lat = np.array([c.lat for c in COUNTRIES])[merchant_country] + rng.normal(0, 1.5, merchants)
    lon = np.array([c.lon for c in COUNTRIES])[merchant_country] + rng.normal(0, 2.0, merchants)
    order = np.argsort(merchant_country, kind="stable").astype(np.int64)
    country_count = np.bincount(merchant_country, minlength=len(COUNTRIES)).astype(np.int64)
    country_start = np.concatenate([[0], np.cumsum(country_count)[:-1]]).astype(np.int64)
    home_count = country_count[home]
    favourite_base = rng.integers(0, np.iinfo(np.int32).max, accounts) % np.maximum(home_count, 1)
    favourite_stride = rng.integers(1, 50, accounts)

    return Population(
        seed=seed,
        accounts=accounts,
        home=home.astype(np.int64),
        spend=spend,
        rate=rate,
        hour_shift=hour_shift,
        card_start=card_start,
        card_count=card_count.astype(np.int64),
        device_start=device_start,
        device_count=device_count.astype(np.int64),
        favourite_base=favourite_base.astype(np.int64),
        favourite_stride=favourite_stride.astype(np.int64),
        card_ids=tuple(map(card_id, card_account.tolist(), card_number.tolist())),
        card_account=card_account,
        device_ids=tuple(
            f"dev_{a:06d}_{n}"
            for a, n in zip(device_account.tolist(), device_number.tolist(), strict=True)
        ),
        device_ips=tuple(
            f"{f}.{b}.{c}.{d}" for f, (b, c, d) in zip(first.tolist(), octets.tolist(), strict=True)
        ),
        merchant_ids=tuple(merchant_id(i) for i in range(merchants)),
        merchant_names=tuple(
            f"{CATEGORIES[c].name} {i:05d}" for i, c in enumerate(category.tolist())
        ),
        merchant_category=category.astype(np.int64),
        merchant_kind=kind.astype(np.int64),
        merchant_country=merchant_country.astype(np.int64),
        merchant_ticket=ticket,
        merchant_risky=risky,
        merchant_lat=np.clip(lat, -89.0, 89.0),
        merchant_lon=np.clip(lon, -179.0, 179.0),
        country_merchants=order,
        country_start=country_start,
        country_count=country_count,
    )
