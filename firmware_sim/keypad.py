"""Keypad mode of a simulated kit: OpenPAYGO tokens typed in, decoded by the reference
decoder ``openpaygo.decode_token``, applied to the same ``KitFirmware`` state as MQTT
commands (docs/commands.md, "Keypad tokens": the chain rule shared with control.commands.tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass

import openpaygo

from firmware_sim.firmware import KitFirmware

log = logging.getLogger(__name__)

DAY_S = 86_400
# A typed code: 9 digits or more (OpenPAYGO Token; the extended format is longer), standing
# alone. The code is the last such number of a message (it follows the kit id in our texts).
_CODE = re.compile(r"(?<!\d)\d{9,}(?!\d)")


def token_in_text(text: str) -> str | None:
    """The keypad code in an SMS as a customer reads it (receipt, token or owned message)."""
    found = _CODE.findall(text)
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class KeypadResult:
    accepted: bool
    token_type: str  # add_time|set_time|disable_payg|counter_sync|invalid|already_used
    value_days: int | None
    credit_until: int | None
    locked: bool


_NAMES = {
    openpaygo.TokenType.ADD_TIME: "add_time", openpaygo.TokenType.SET_TIME: "set_time",
    openpaygo.TokenType.DISABLE_PAYG: "disable_payg",
    openpaygo.TokenType.COUNTER_SYNC: "counter_sync",
    openpaygo.TokenType.INVALID: "invalid", openpaygo.TokenType.ALREADY_USED: "already_used",
}


class Keypad:
    """The kit's token state: count and used counts (as the reference device keeps them)
    and the chain position, starting at ``anchor`` (the kit's provisioning time)."""

    def __init__(self, firmware: KitFirmware, *, anchor: int) -> None:
        self.firmware = firmware
        self.count = 0
        self.used_counts: list[int] = []
        self.chain_until = anchor

    @property
    def key(self) -> str:
        # derived from the command secret the kit holds now (same rule as control.commands.tokens)
        secret = bytes.fromhex(self.firmware.secret_hex)
        return hmac.new(secret, b"openpaygo", hashlib.sha256).hexdigest()[:32]

    def enter(self, token: str) -> KeypadResult:
        """Decode one typed token and apply it; refused tokens change nothing."""
        fw = self.firmware
        now = int(fw.clock.now())
        fw.tick()
        value, ttype, count, used = openpaygo.decode_token(
            token=token, secret_key=self.key, count=self.count, used_counts=self.used_counts)
        name = _NAMES.get(ttype, "invalid")
        if ttype in (openpaygo.TokenType.INVALID, openpaygo.TokenType.ALREADY_USED):
            log.warning("kit %s: keypad token refused (%s)", fw.kit_id, name)
            return KeypadResult(False, name, None, fw.credit_until, fw.locked)
        assert count is not None
        if used is None:
            # the library returns None while the used list is empty: seed it with this count
            used = openpaygo.OpenPAYGOTokenDecoder.update_used_counts(
                [*self.used_counts, count], value, count, ttype)
        self.used_counts = list(used or [])
        self.count = max(self.count, int(count))  # an older ADD_TIME may come out of order
        days = int(value) if value is not None else None
        if ttype == openpaygo.TokenType.ADD_TIME and days is not None:
            self.chain_until += days * DAY_S
            fw.owned = False
            fw.credit_until = max(fw.credit_until or 0, self.chain_until)
        elif ttype == openpaygo.TokenType.SET_TIME and days is not None:
            self.chain_until = now - now % DAY_S + days * DAY_S
            fw.owned = False
            fw.credit_until = self.chain_until
        elif ttype == openpaygo.TokenType.DISABLE_PAYG:
            fw.owned = True
            fw.credit_until = None
        fw.locked = not fw.owned and (fw.credit_until is None or fw.credit_until <= now)
        log.info("kit %s: keypad %s %s -> credit_until=%s locked=%s",
                 fw.kit_id, name, days, fw.credit_until, fw.locked)
        return KeypadResult(True, name, days, fw.credit_until, fw.locked)
