"""The audit log: one record per scored patient, kept where an insurer can later answer
"what did we forecast for this patient, with which model?" (EU AI Act, Annex III 5(c)).

:mod:`~chargecast.audit.store` is the storage (SQLite, PostgreSQL, JSON Lines files);
:mod:`~chargecast.audit.writer` moves records there off the request path. Serving imports
this package, so it stays free of pandas, pyarrow and the training libraries.
"""
