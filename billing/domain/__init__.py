"""The pure domain core: money, plans, billing periods and the subscription lifecycle.

No I/O and no imports from the rest of the project; money is ``decimal.Decimal``
(and integer minor units), never binary floating point.
"""
