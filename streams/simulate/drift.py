"""Drift injected into a simulated stream at a known time, to prove drift detection works.

``DriftInjection.parse("amount:x3:share=0.5:at=2026-11-21T10:00")`` and friends:

* ``amount`` — amounts multiplied by ``factor`` for a share of accounts;
* ``country`` — a share of accounts starts buying from merchants in new countries;
* ``missing`` — a share of events comes from merchants the nightly run never saw, so
  every merchant feature is served from its defaults (a feature going missing).

Accounts are chosen by a hash of the account id, so the same accounts drift every run.
``DriftInjection.affects`` names the features each kind changes, so a detection-power
check (``streamscore bench drift --detection``, tests/integration/test_drift.py) knows
which features must alert and which must stay quiet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.simulate.exceptions import SimulationError

__all__ = ["AMOUNT_FEATURES", "KINDS", "NEW_COUNTRIES", "DriftInjection"]

KINDS = ("amount", "country", "missing")
NEW_COUNTRIES = ("NG", "VN", "BR", "ID")
# The event features computed from the amount (streams.features.event).
AMOUNT_FEATURES = ("event__amount", "event__log_amount", "event__amount_vs_account_mean_30d")


def _share_of(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class DriftInjection:
    kind: str
    at: datetime
    share: float = 0.5
    factor: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SimulationError(f"drift kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0.0 < self.share <= 1.0:
            raise SimulationError(f"drift share must be in (0, 1], got {self.share}")
        if self.at.tzinfo is None:
            raise SimulationError("drift time needs a UTC offset")

    @classmethod
    def parse(cls, text: str) -> DriftInjection:
        """``kind[:xFACTOR][:share=S][:at=ISO-TIME]`` (``at`` defaults to now)."""
        kind, options = text.partition(":")[0], _options(text)
        share, factor, at = 0.5, 3.0, datetime.now(UTC)
        for option in options:
            if option.startswith("x"):
                factor = float(option[1:])
            elif option.startswith("share="):
                share = float(option.removeprefix("share="))
            elif option.startswith("at="):
                at = datetime.fromisoformat(option.removeprefix("at="))
                at = at if at.tzinfo else at.replace(tzinfo=UTC)
            else:
                raise SimulationError(f"drift option {option!r} not understood in {text!r}")
        return cls(kind, at, share, factor)

    def affects(self, feature: str) -> bool:
        """Whether this kind changes ``feature`` (a feature-service name): ``amount`` the
        amount's features, ``country`` the foreign flag (new merchant countries differ
        from every card's), ``missing`` every feature of the merchant view (all served
        from defaults). The score follows whatever the model reads: neither."""
        if self.kind == "amount":
            return feature in AMOUNT_FEATURES
        if self.kind == "country":
            return feature == "event__is_foreign"
        return feature.startswith("merchant__")

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` as drifted (a copy), or unchanged before ``at`` / for other accounts."""
        when = datetime.fromisoformat(str(event["event_time"]))
        if when < self.at or _share_of(str(event["account_id"])) >= self.share:
            return event
        out = dict(event)
        if self.kind == "amount":
            out["amount"] = round(min(float(event["amount"]) * self.factor, 1_000_000.0), 2)
        elif self.kind == "country":
            pick = int(_share_of(str(event["event_id"])) * len(NEW_COUNTRIES))
            out["merchant_country"] = NEW_COUNTRIES[pick]
        else:
            out["merchant_id"] = f"m_unseen_{str(event['merchant_id'])[-5:]}"
        return out


def _options(text: str) -> list[str]:
    # "amount:x3:share=0.5:at=2026-11-21T10:00:00+00:00" — times contain ':' too.
    _, _, rest = text.partition(":")
    out: list[str] = []
    while rest:
        if rest.startswith("at="):
            out.append(rest)
            break
        part, _, rest = rest.partition(":")
        out.append(part)
    return out
