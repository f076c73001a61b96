"""Payments and bank reconciliation (docs/payments.md): partners' bank details under four
eyes (:mod:`.bank_accounts`), payment runs and their ISO 20022 files (:mod:`.runs`,
:mod:`.files`), bank statements in and the reconciliation queue (:mod:`.reconcile`)."""
