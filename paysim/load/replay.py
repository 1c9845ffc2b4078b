"""Payments from files: paysim's own --record files, and CSVs in the PaySim format.

A record file is JSON lines: a header, then one fake payment a line with its send offset
(runner.record_line). A PaySim CSV (step, type, amount, nameOrig, oldbalanceOrg, newbalanceOrig,
nameDest, ...) is the format of the PaySim mobile-money data set people already have: each
account becomes a stable fake card, each destination a stable fake merchant.
"""

from __future__ import annotations

import csv
import json
import random
import zlib
from datetime import UTC, datetime
from pathlib import Path

from paysim.domain import cards, money
from paysim.domain.messages import Merchant
from paysim.infra.config import finite_number
from paysim.infra.errors import ConfigError
from paysim.load.generator import NETWORKS, GeneratedPayment, make_pan

PAYSIM_COLUMNS = ("step", "type", "amount", "nameOrig", "nameDest")
# What each PaySim transaction type is, as a card merchant category.
PAYSIM_MCC = {"PAYMENT": "5999", "TRANSFER": "4829", "CASH_OUT": "6011", "DEBIT": "6012",
              "CASH_IN": "6051"}


def read_record(path: Path) -> tuple[dict, list[tuple[GeneratedPayment, float]]]:
    """The header and (payment, offset) pairs of a --record file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"record file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"record file {path} is not UTF-8 text") from None
    if not lines:
        raise ConfigError(f"record file {path} is empty")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("paysim_record") != 1:
        raise ConfigError(f"{path}:1: not a paysim record file (no paysim_record header)")
    payments = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            card = data["card"]
            merchant = data["merchant"]
            payment = GeneratedPayment(
                seq=int(data["seq"]),
                card=cards.CardBlock(str(card["number"]), int(card["exp_month"]),
                                     int(card["exp_year"]), str(card["cvv"])),
                amount=_whole(data["amount"]), currency=str(data["currency"]),
                merchant=Merchant(id=str(merchant["id"]), name=str(merchant["name"]),
                                  mcc=str(merchant["mcc"]), country=str(merchant["country"])),
                expected=data.get("expected"),
            )
            offset = finite_number(data["offset_s"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: not a recorded payment ({exc})") from None
        payments.append((payment, offset))
    return header, payments


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"amount must be whole minor units, got {value!r}")
    return value


def _stable_rng(name: str) -> random.Random:
    return random.Random(zlib.crc32(name.encode()))


def card_for_account(account: str) -> cards.CardBlock:
    """The same PaySim account always pays with the same fake card."""
    rng = _stable_rng("card:" + account)
    network = rng.choices(list(NETWORKS), [v[0] for v in NETWORKS.values()])[0]
    _, prefixes, length = NETWORKS[network]
    return cards.CardBlock(
        number=make_pan(rng, prefixes, length), exp_month=rng.randint(1, 12),
        exp_year=datetime.now(UTC).year + 1 + rng.randint(0, 4),
        cvv="".join(rng.choice("0123456789") for _ in range(cards.cvv_length(network))),
    )


def read_paysim_csv(path: Path) -> list[GeneratedPayment]:
    """One payment per row, in USD (PaySim amounts are in units with two decimals)."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ConfigError(f"PaySim CSV {path} cannot be read: {exc.strerror}") from None
    payments = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PAYSIM_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}:1: not a PaySim CSV: no column {missing[0]!r} "
                              f"(expected {', '.join(PAYSIM_COLUMNS)}, ...)")
        try:
            for row in reader:
                kind = row["type"].strip().upper()
                amount = round(finite_number(row["amount"]) * 10 ** money.exponent("USD"))
                destination = row["nameDest"].strip()
                payments.append(GeneratedPayment(
                    seq=len(payments), card=card_for_account(row["nameOrig"].strip()),
                    amount=amount, currency="USD",
                    merchant=Merchant(id=destination[:40] or "unknown",
                                      name=f"PaySim {kind.lower()} {destination}"[:60],
                                      mcc=PAYSIM_MCC.get(kind, "5999"), country="US"),
                    expected=None,
                ))
        except (ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not a PaySim row ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
    if not payments:
        raise ConfigError(f"{path}: no rows")
    return payments
