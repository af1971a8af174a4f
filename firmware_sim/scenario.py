"""Fleet scenarios: a TOML or YAML file in, a deterministic plan of kits and events out.

Pure code (no I/O beyond reading the file): ``load_scenario`` validates the file into a
``Scenario``; ``build_plan(scenario, seed)`` draws every kit (size, household, region,
clock drift, payment behaviour, misbehaviour, keypad) and every event (payments, link drops,
region outages) from ``random.Random(seed)``, so the same scenario and seed give the same
fleet and the same events. The asyncio driver (``firmware_sim.driver``) then plays the
plan against real servers. The file format is documented in docs/simulation.md.
"""

from __future__ import annotations

import dataclasses
import random
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from firmware_sim.physics import HOUSEHOLDS, KIT_SIZES, Household

DAY = 86_400
HOUR = 3_600

PaymentBehaviour = Literal["daily", "weekly", "late", "stops", "early", "never", "fades"]
BEHAVIOURS: tuple[PaymentBehaviour, ...] = ("daily", "weekly", "late", "stops", "early", "never",
                                            "fades")
# "fades": a household under growing strain (docs/simulation.md). It stops paying at a day
# drawn in FADE_STOP_DAYS; FADE_LENGTH_DAYS before that it starts topping up fewer days at a
# time (a weekly payer) and paying later after each top-up has run out.
FADE_STOP_DAYS = (35.0, 80.0)
FADE_LENGTH_DAYS = (14.0, 35.0)
Misbehaviour = Literal["malformed", "wrong_kit_id", "replay", "tamper", "stuck_sensor",
                       "never_ack"]
MISBEHAVIOURS: tuple[Misbehaviour, ...] = ("malformed", "wrong_kit_id", "replay", "tamper",
                                           "stuck_sensor", "never_ack")
# A keypad kit either has no 2G modem (tokens are its only way in) or keeps its MQTT link too
# and gets both the token and the command (docs/commands.md: they converge once).
KeypadKind = Literal["only", "with_mqtt"]
# How a kit talks to us: the MQTT kit contract, or OpenPAYGO Metrics over HTTP.
KitKind = Literal["mqtt", "openpaygo_metrics"]
MetricsEncoding = Literal["json", "cbor"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanSpec(_Strict):
    deposit_fcfa: int = Field(default=2_000, ge=0)
    daily_rate_fcfa: int = Field(default=100, gt=0)
    total_price_fcfa: int = Field(default=20_000, gt=0)


class RegionOutage(_Strict):
    region: str
    start_day: float = Field(ge=0)  # days after the scenario start
    hours: float = Field(gt=0)


class NetworkSpec(_Strict):
    drop_rate_per_day: float = Field(default=0.0, ge=0)  # link drops per kit per sim day
    outage_s: tuple[float, float] = (300.0, 3_600.0)  # how long a dropped kit stays away
    region_outages: list[RegionOutage] = Field(default_factory=list)
    reconnect_base_s: float = Field(default=0.5, gt=0)  # real seconds, jittered backoff
    reconnect_cap_s: float = Field(default=30.0, gt=0)
    # what kits time their keepalive pings on: the wall clock (the broker's view), or the
    # simulated one, so an accelerated month sends a real month's pings (bench/wire.py)
    keepalive_clock: Literal["real", "simulated"] = "real"

    @field_validator("outage_s")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("outage_s must be [min, max] with 0 < min <= max")
        return v


class KeypadSpec(_Strict):
    """Keypad (OpenPAYGO) kits: flagged keypad-only through the API, customers type the code
    from each payment's receipt (or as support reads it out) after a short delay."""

    share: float = Field(default=0.0, ge=0, le=1)  # share of the fleet with a keypad
    with_mqtt: float = Field(default=0.5, ge=0, le=1)  # of those, share keeping their 2G link
    delay_h: tuple[float, float] = (0.25, 3.0)  # simulated hours from the code to typing it
    source: Literal["receipt", "support"] = "receipt"  # SMS outbox file, or GET .../tokens

    @field_validator("delay_h")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError("delay_h must be [min, max] with 0 <= min <= max")
        return v


class MetricsSpec(_Strict):
    """OpenPAYGO Metrics devices: no MQTT; each posts its readings to the control
    service's ``/dd`` every ``every_s`` simulated seconds and takes its tokens and its
    active-until time from the answer (docs/simulation.md)."""

    share: float = Field(default=0.0, ge=0, le=1)  # share of the fleet
    every_s: float = Field(default=3_600.0, gt=0)  # sim seconds between requests
    cbor: float = Field(default=0.5, ge=0, le=1)  # of those, share posting CBOR (else JSON)


class ProtocolSpec(_Strict):
    """Which kit contract the kits speak (docs/protocol.md): a share provisioned with v2,
    and a share of the v1 kits marked to be moved to v2 during the run (by a ``protocol``
    command the run's driver asks the control API for)."""

    v2_share: float = Field(default=0.0, ge=0, le=1)
    switch_share: float = Field(default=0.0, ge=0, le=1)  # of the v1 kits
    # v2 kits' keepalive (longer than the reporting interval: docs/protocol.md); None: the
    # scenario's keepalive_s
    v2_keepalive_s: int | None = Field(default=None, ge=10, le=65_535)


class Scenario(_Strict):
    """What a scenario file holds (see docs/simulation.md for each key)."""

    name: str = "scenario"
    kits: int = Field(default=100, ge=1)
    kit_id_prefix: str = Field(default="SIM-", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: float = Field(default=1.0, gt=0)
    speed: float = Field(default=1440.0, gt=0)  # sim seconds per real second
    telemetry_interval_s: float = Field(default=900.0, gt=0)  # sim seconds
    keepalive_s: int = Field(default=120, ge=10, le=65_535)
    drift_ppm: float = Field(default=50.0, ge=0)  # kits drift uniformly within +-this
    sizes: dict[str, float] = Field(default_factory=lambda: {"S": 0.5, "M": 0.35, "L": 0.15})
    households: dict[str, float] = Field(
        default_factory=lambda: {"basic": 0.4, "standard": 0.4, "large": 0.2})
    regions: dict[str, float] = Field(default_factory=lambda: {"Maritime": 1.0})
    payments: dict[str, float] = Field(
        default_factory=lambda: {"daily": 0.3, "weekly": 0.3, "late": 0.15, "stops": 0.1,
                                 "early": 0.05, "never": 0.1})
    plan: PlanSpec = PlanSpec()
    network: NetworkSpec = NetworkSpec()
    misbehaviour: dict[str, float] = Field(default_factory=dict)  # share of kits per kind
    keypad: KeypadSpec = KeypadSpec()
    metrics: MetricsSpec = MetricsSpec()
    protocols: ProtocolSpec = ProtocolSpec()

    @field_validator("start", mode="before")
    @classmethod
    def _utc(cls, v: Any) -> Any:
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _mixes(self) -> Scenario:
        checks: list[tuple[str, dict[str, float], tuple[str, ...] | None]] = [
            ("sizes", self.sizes, tuple(KIT_SIZES)),
            ("households", self.households, HOUSEHOLDS),
            ("regions", self.regions, None),
            ("payments", self.payments, BEHAVIOURS),
        ]
        for name, mix, allowed in checks:
            if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"{name}: give positive weights")
            if allowed is not None and set(mix) - set(allowed):
                raise ValueError(f"{name}: unknown {sorted(set(mix) - set(allowed))}, "
                                 f"expected some of {list(allowed)}")
        unknown = set(self.misbehaviour) - set(MISBEHAVIOURS)
        if unknown:
            raise ValueError(f"misbehaviour: unknown {sorted(unknown)}, "
                             f"expected some of {list(MISBEHAVIOURS)}")
        if any(not 0 <= v <= 1 for v in self.misbehaviour.values()):
            raise ValueError("misbehaviour shares are fractions of the fleet, 0..1")
        for outage in self.network.region_outages:
            if outage.region not in self.regions:
                raise ValueError(f"region outage in unknown region {outage.region!r}")
        return self

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.days * DAY


def load_scenario(path: Path, **overrides: Any) -> Scenario:
    """Read a ``.toml`` or ``.yaml``/``.yml`` scenario; ``overrides`` replace top-level keys."""
    text = Path(path).read_text(encoding="utf-8")
    data: Any
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a scenario is a mapping of keys")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Scenario.model_validate(data)


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payment:
    at: float  # sim time
    amount_fcfa: int


@dataclass(frozen=True, slots=True)
class KitPlan:
    kit_id: str
    size: str
    household: Household
    region: str
    drift_ppm: float
    clock_offset_s: float
    first_report_s: float  # offset of its own telemetry schedule
    behaviour: PaymentBehaviour
    payments: tuple[Payment, ...]
    outages: tuple[tuple[float, float], ...]  # (start, end) sim times, link down
    misbehaviour: frozenset[Misbehaviour]
    phone: str
    keypad: KeypadKind | None = None  # a keypad kit (scenario ``[keypad]``), or MQTT only
    kind: KitKind = "mqtt"  # an OpenPAYGO Metrics device (scenario ``[metrics]``)
    metrics_encoding: MetricsEncoding = "json"
    protocol: int = 1  # the kit contract version it is provisioned with
    switch_to_v2: bool = False  # a v1 kit to move to v2 during the run


@dataclass(frozen=True, slots=True)
class FleetPlan:
    scenario: Scenario
    seed: int
    kits: tuple[KitPlan, ...]
    events: tuple[tuple[float, str, str], ...] = field(default=())  # (sim t, kit, what)


def _pick(rng: random.Random, mix: dict[str, float]) -> str:
    keys = sorted(mix)
    return rng.choices(keys, weights=[mix[k] for k in keys])[0]


def payment_schedule(behaviour: PaymentBehaviour, plan: PlanSpec, start: float, end: float,
                     rng: random.Random) -> tuple[Payment, ...]:
    """When and how much one customer pays (the deposit was taken at the sale)."""
    rate = plan.daily_rate_fcfa
    out: list[Payment] = []
    hour = rng.uniform(7, 20) * HOUR  # the customer's usual time of day

    def at(day: float) -> float:
        return start + day * DAY + hour

    if behaviour == "daily":
        day = 0.0
        while at(day) < end:
            out.append(Payment(at(day), rate))
            day += 1
    elif behaviour in ("weekly", "late", "stops"):
        stop_day = rng.uniform(5, 15) if behaviour == "stops" else float("inf")
        day = 0.0
        while at(day) < end and day < stop_day:
            out.append(Payment(at(day), 7 * rate))
            day += 7 + (rng.randint(1, 3) if behaviour == "late" else 0)
    elif behaviour == "fades":
        habit = rng.choice((1, 7))  # paid a day or a week at a time, like "daily"/"weekly"
        stop_day = rng.uniform(*FADE_STOP_DAYS)
        fade_day = stop_day - rng.uniform(*FADE_LENGTH_DAYS)
        day, strained = 0.0, 0  # strained: top-ups made since the strain began
        while at(day) < end and day < stop_day:
            if day < fade_day:
                bought = habit  # on the day the last top-up runs out
            else:
                strained += 1  # the k-th top-up buys habit-2-k to habit-k days (>= 1)...
                bought = max(1, habit - strained - rng.randint(0, 2))
            out.append(Payment(at(day), bought * rate))
            # ...and the next one comes k to k+2 days after it has run out
            day += bought + (strained + rng.randint(0, 2) if strained else 0)
    elif behaviour == "early":
        out.append(Payment(at(0), 7 * rate))
        payoff_day = rng.uniform(3, 10)
        if at(payoff_day) < end:
            owed = plan.total_price_fcfa - plan.deposit_fcfa - 7 * rate
            if owed > 0:
                out.append(Payment(at(payoff_day), owed))
    return tuple(p for p in out if p.at < end)


def _outages(rng: random.Random, net: NetworkSpec, start: float, end: float
             ) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    if net.drop_rate_per_day <= 0:
        return out
    rate_per_s = net.drop_rate_per_day / DAY
    t = start + rng.expovariate(rate_per_s)
    while t < end:
        length = rng.uniform(*net.outage_s)
        out.append((t, t + length))
        t += length + rng.expovariate(rate_per_s)
    return out


def build_plan(scenario: Scenario, seed: int) -> FleetPlan:
    """Every kit and event of the run, from the scenario and the seed alone."""
    rng = random.Random(seed)
    # keypad kits come from their own stream: a share of 0 leaves every other draw as it was,
    # and a larger share keeps the kits a smaller one picked (two draws per kit, always)
    keypad_rng = random.Random(f"{seed}:keypad")
    metrics_rng = random.Random(f"{seed}:metrics")  # likewise, for Metrics devices
    protocol_rng = random.Random(f"{seed}:protocol")  # its own stream too, for the same reason
    start, end = scenario.start_ts, scenario.end_ts
    width = max(6, len(str(scenario.kits)))
    kits: list[KitPlan] = []
    events: list[tuple[float, str, str]] = []
    for i in range(scenario.kits):
        kit_id = f"{scenario.kit_id_prefix}{i:0{width}d}"
        size = _pick(rng, scenario.sizes)
        household: Household = _pick(rng, scenario.households)  # type: ignore[assignment]
        region = _pick(rng, scenario.regions)
        behaviour: PaymentBehaviour = _pick(rng, scenario.payments)  # type: ignore[assignment]
        payments = payment_schedule(behaviour, scenario.plan, start, end, rng)
        outages = _outages(rng, scenario.network, start, end)
        for ro in scenario.network.region_outages:
            if ro.region == region:
                s = start + ro.start_day * DAY
                outages.append((s, s + ro.hours * HOUR))
        outages.sort()
        misbehaviour = frozenset(
            m for m in MISBEHAVIOURS if rng.random() < scenario.misbehaviour.get(m, 0.0))
        has_keypad = keypad_rng.random() < scenario.keypad.share
        keeps_mqtt = keypad_rng.random() < scenario.keypad.with_mqtt
        keypad: KeypadKind | None = None
        is_metrics = metrics_rng.random() < scenario.metrics.share
        posts_cbor = metrics_rng.random() < scenario.metrics.cbor
        if has_keypad and not is_metrics:
            keypad = "with_mqtt" if keeps_mqtt else "only"
        kit = KitPlan(
            kit_id=kit_id, size=size, household=household, region=region,
            drift_ppm=rng.uniform(-scenario.drift_ppm, scenario.drift_ppm),
            clock_offset_s=rng.uniform(-2.0, 2.0),
            first_report_s=rng.uniform(0, scenario.telemetry_interval_s),
            behaviour=behaviour, payments=payments, outages=tuple(outages),
            misbehaviour=misbehaviour, phone=f"+2289{rng.randrange(10**7):07d}",
            keypad=keypad, kind="openpaygo_metrics" if is_metrics else "mqtt",
            metrics_encoding="cbor" if posts_cbor else "json",
        )
        is_v2 = protocol_rng.random() < scenario.protocols.v2_share
        switches = protocol_rng.random() < scenario.protocols.switch_share and not is_v2
        if is_v2 or switches:
            kit = dataclasses.replace(kit, protocol=2 if is_v2 else 1, switch_to_v2=switches)
        kits.append(kit)
        events.extend((p.at, kit_id, f"pay {p.amount_fcfa}") for p in payments)
        events.extend((a, kit_id, f"link down until {b:.0f}") for a, b in outages)
    events.sort()
    return FleetPlan(scenario, seed, tuple(kits), tuple(events))
