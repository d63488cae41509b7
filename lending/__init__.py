"""Lending on the ledger (DESIGN section 8): schedules, the product factory, credit limits.

Sits above the ledger: it may use proto/ and the SDK in clients/; nothing below imports it.
"""
