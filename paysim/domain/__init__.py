"""Payments as data and rules: money, cards, decisions, messages. Pure: no I/O, and nothing of
paysim's outside this package."""
