"""Consent, data-use matching and GDPR provenance: a pure library (no Flask, no database).

- :mod:`consent.duo` — the GA4GH Data Use Ontology terms MyoVault understands (closed, versioned
  vocabulary) and the matching of a stated intended use against a participant's consent.
- :mod:`consent.records` — validation of one consent record.
- :mod:`consent.tabular` — bulk consent CSV/TSV parsing with row-level errors.
- :mod:`consent.provenance` — W3C PROV documents (``prov`` package) of objects and derived numbers.
- :mod:`consent.art30` — GDPR Art. 30 records of processing.
"""
