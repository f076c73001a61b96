"""The ISO 20022 payment files a run hands to the bank, each validated against its official
XSD (the schemas ``sepaxml`` ships) before it is stored.

- EUR credit transfers: ``pain.001.001.09`` under the SEPA rules, written by ``sepaxml``
  (service level ``SEPA``, charges ``SLEV``, names in the SEPA character set).
- Credit transfers in any other currency: ``pain.001.001.09`` without the SEPA service level
  (charges ``SHAR``), amounts with the currency's ISO 4217 exponent. ``sepaxml`` writes every
  amount with two decimals, so these are built here (:func:`_foreign_transfer`), element by
  element in the schema's order.
- Direct debits (EUR, a partner with a mandate): ``pain.008.001.08`` (SEPA Core), by
  ``sepaxml``: the operator's creditor id, the mandate's id and date, ``FRST`` for a mandate's
  first collection and ``RCUR`` after.

Every payment's ``EndToEndId`` is the statement id and its remittance text names the
statement and its period. ``MsgId`` (at most 35 characters) is the run id's 26 characters, the
kind and the currency (``01KB...-CT-EUR``); ``PmtInfId`` the ``MsgId`` and the batch's number:
a file is the same bytes for the same run.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib.resources import files as package_files
from typing import Any

import xmlschema
from sepaxml import SepaDD, SepaTransfer

from coalition.money import format_amount

CREDIT_TRANSFER = "pain.001.001.09"
DIRECT_DEBIT = "pain.008.001.08"
FORMATS = (CREDIT_TRANSFER, DIRECT_DEBIT)


@dataclass(frozen=True, slots=True)
class Operator:
    """The operator's own account (``COALITION_OPERATOR_*``)."""

    name: str
    iban: str
    bic: str
    creditor_id: str | None


@dataclass(frozen=True, slots=True)
class Instruction:
    """One payment: to the partner (a credit transfer) or from it (a direct debit)."""

    end_to_end_id: str
    amount_minor: int
    currency: str
    name: str
    iban: str
    bic: str | None
    remittance: str
    mandate_id: str | None = None
    mandate_signed_on: date | None = None
    #: ``FRST`` or ``RCUR`` (direct debits).
    sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Built:
    """A file as built: its format, currency, count, control sum and bytes."""

    name: str
    format: str
    currency: str
    transactions: int
    control_sum_minor: int
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@cache
def schema(format_: str) -> xmlschema.XMLSchema:
    """The official XSD of a pain format (as shipped by ``sepaxml``), loaded once."""
    path = package_files("sepaxml") / "schemas" / f"{format_}.xsd"
    return xmlschema.XMLSchema(str(path))


def validate(content: bytes, format_: str) -> None:
    """Raise ``xmlschema.XMLSchemaValidationError`` unless ``content`` is valid ``format_``."""
    schema(format_).validate(content.decode("utf-8"))


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


class _Fixed:
    """What makes a sepaxml file the same bytes for the same run: its ``MsgId``, its
    ``CreDtTm`` and its batches' ``PmtInfId`` (sepaxml draws them at random and from the local
    clock)."""

    root_el: str
    _xml: Any

    def fix(self, msg_id: str, created_at: datetime) -> None:
        header = self._xml.find(f"{self.root_el}/GrpHdr")
        header.find("MsgId").text = msg_id
        header.find("CreDtTm").text = _timestamp(created_at)
        self._msg_id = msg_id

    def number_batches(self) -> None:
        for number, node in enumerate(self._xml.iter("PmtInfId"), start=1):
            node.text = f"{self._msg_id}-{number}"


class _SepaTransfer(_Fixed, SepaTransfer):  # type: ignore[misc]
    def _finalize_batch(self) -> None:
        super()._finalize_batch()
        self.number_batches()


class _SepaDebit(_Fixed, SepaDD):  # type: ignore[misc]
    def _finalize_batch(self) -> None:
        super()._finalize_batch()
        self.number_batches()


def _sepa_transfer(
    name: str,
    operator: Operator,
    created_at: datetime,
    execution: date,
    payments: Sequence[Instruction],
) -> bytes:
    writer = _SepaTransfer(
        {"name": operator.name, "IBAN": operator.iban, "BIC": operator.bic, "batch": True,
         "currency": "EUR"},
        schema=CREDIT_TRANSFER,
    )  # fmt: skip
    writer.fix(name, created_at)
    for p in payments:
        payment: dict[str, Any] = {
            "name": p.name,
            "IBAN": p.iban,
            "amount": p.amount_minor,
            "execution_date": execution,
            "description": p.remittance,
            "endtoend_id": p.end_to_end_id,
        }
        if p.bic:
            payment["BIC"] = p.bic
        writer.add_payment(payment)
    content: bytes = writer.export(validate=False)
    return content


def _sepa_debit(
    name: str,
    operator: Operator,
    created_at: datetime,
    execution: date,
    payments: Sequence[Instruction],
) -> bytes:
    writer = _SepaDebit(
        {"name": operator.name, "IBAN": operator.iban, "BIC": operator.bic, "batch": True,
         "creditor_id": operator.creditor_id, "currency": "EUR"},
        schema=DIRECT_DEBIT,
    )  # fmt: skip
    writer.fix(name, created_at)
    for p in payments:
        payment: dict[str, Any] = {
            "name": p.name,
            "IBAN": p.iban,
            "amount": p.amount_minor,
            "type": p.sequence,
            "collection_date": execution,
            "mandate_id": p.mandate_id,
            "mandate_date": p.mandate_signed_on,
            "description": p.remittance,
            "endtoend_id": p.end_to_end_id,
        }
        if p.bic:
            payment["BIC"] = p.bic
        writer.add_payment(payment)
    content: bytes = writer.export(validate=False)
    return content


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    node = ET.SubElement(parent, tag, attrs)
    if text is not None:
        node.text = text
    return node


def _agent(parent: ET.Element, tag: str, bic: str | None) -> None:
    institution = _add(_add(parent, tag), "FinInstnId")
    if bic:
        _add(institution, "BICFI", bic)
    else:
        _add(_add(institution, "Othr"), "Id", "NOTPROVIDED")


def _foreign_transfer(
    name: str,
    *,
    operator: Operator,
    created_at: datetime,
    execution: date,
    currency: str,
    payments: Sequence[Instruction],
) -> bytes:
    """A ``pain.001.001.09`` credit transfer in a currency other than EUR (no SEPA rules)."""
    total = format_amount(sum(p.amount_minor for p in payments), currency)
    count = str(len(payments))
    root = ET.Element("Document", {"xmlns": f"urn:iso:std:iso:20022:tech:xsd:{CREDIT_TRANSFER}"})
    initiation = _add(root, "CstmrCdtTrfInitn")
    header = _add(initiation, "GrpHdr")
    _add(header, "MsgId", name)
    _add(header, "CreDtTm", _timestamp(created_at))
    _add(header, "NbOfTxs", count)
    _add(header, "CtrlSum", total)
    _add(_add(header, "InitgPty"), "Nm", operator.name[:140])
    batch = _add(initiation, "PmtInf")
    _add(batch, "PmtInfId", f"{name}-1")
    _add(batch, "PmtMtd", "TRF")
    _add(batch, "BtchBookg", "true")
    _add(batch, "NbOfTxs", count)
    _add(batch, "CtrlSum", total)
    _add(_add(batch, "ReqdExctnDt"), "Dt", execution.isoformat())
    _add(_add(batch, "Dbtr"), "Nm", operator.name[:140])
    _add(_add(_add(batch, "DbtrAcct"), "Id"), "IBAN", operator.iban)
    _agent(batch, "DbtrAgt", operator.bic)
    _add(batch, "ChrgBr", "SHAR")
    for p in payments:
        tx = _add(batch, "CdtTrfTxInf")
        _add(_add(tx, "PmtId"), "EndToEndId", p.end_to_end_id)
        _add(_add(tx, "Amt"), "InstdAmt", format_amount(p.amount_minor, currency), Ccy=currency)
        _agent(tx, "CdtrAgt", p.bic)
        _add(_add(tx, "Cdtr"), "Nm", p.name[:140])
        _add(_add(_add(tx, "CdtrAcct"), "Id"), "IBAN", p.iban)
        _add(_add(tx, "RmtInf"), "Ustrd", p.remittance[:140])
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode").encode()
    )


def message_id(run_id: str, kind: str, currency: str) -> str:
    """A file's ``MsgId``: the run id without its prefix, ``CT``/``DD``, the currency."""
    return f"{run_id.partition('_')[2]}-{kind}-{currency}"


def credit_transfers(
    run_id: str,
    operator: Operator,
    *,
    created_at: datetime,
    execution: date,
    currency: str,
    payments: Sequence[Instruction],
) -> Built:
    """The ``pain.001.001.09`` file of a run's credit transfers in one currency, validated."""
    name = message_id(run_id, "CT", currency)
    if currency == "EUR":
        content = _sepa_transfer(name, operator, created_at, execution, payments)
    else:
        content = _foreign_transfer(
            name,
            operator=operator,
            created_at=created_at,
            execution=execution,
            currency=currency,
            payments=payments,
        )
    validate(content, CREDIT_TRANSFER)
    total = sum(p.amount_minor for p in payments)
    return Built(
        f"{run_id}-credit-transfers-{currency}.xml",
        CREDIT_TRANSFER,
        currency,
        len(payments),
        total,
        content,
    )


def direct_debits(
    run_id: str,
    operator: Operator,
    *,
    created_at: datetime,
    execution: date,
    payments: Sequence[Instruction],
) -> Built:
    """The ``pain.008.001.08`` file of a run's SEPA direct debits (EUR), validated."""
    name = message_id(run_id, "DD", "EUR")
    content = _sepa_debit(name, operator, created_at, execution, payments)
    validate(content, DIRECT_DEBIT)
    total = sum(p.amount_minor for p in payments)
    return Built(
        f"{run_id}-direct-debits-EUR.xml", DIRECT_DEBIT, "EUR", len(payments), total, content
    )
