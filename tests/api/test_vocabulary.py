"""One vocabulary: the words the API's structs accept and answer (kinds, statuses, roles,
scopes, algorithms) are exactly the ones the models and rules know."""

from __future__ import annotations

from typing import get_args, get_type_hints

import api.structs as structs
from coalition.models import HOLD_STATUSES, TRANSACTION_KINDS, HoldStatus, TransactionKind
from partners import queries
from partners.models import KEY_ALGS, KEY_ROLES, PARTNER_SCOPES, PARTNER_STATUSES


def test_transaction_kinds_and_hold_statuses_are_the_ledgers() -> None:
    assert get_args(queries.TransactionKind) == TRANSACTION_KINDS
    assert tuple(TransactionKind) == TRANSACTION_KINDS
    assert get_args(structs.HoldStatus) == HOLD_STATUSES
    assert tuple(HoldStatus) == HOLD_STATUSES


def test_scopes_and_algorithms_are_the_keys() -> None:
    assert get_args(structs.Scope) == PARTNER_SCOPES
    assert get_args(structs.KeyAlg) == KEY_ALGS


def test_roles_and_partner_statuses_are_the_models() -> None:
    for answer in (structs.KeyOut, structs.Me):
        assert get_args(get_type_hints(answer)["role"]) == KEY_ROLES
    assert get_args(get_type_hints(structs.PartnerOut)["status"]) == PARTNER_STATUSES
