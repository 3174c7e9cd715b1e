"""Phone calls (SIP): the lines file and incoming calls.

:mod:`broker.sip.lines` (the lines file), :mod:`broker.sip.calls` (the webhook intake),
:mod:`broker.sip.actions` (reject, refer), :mod:`broker.sip.accept` (the accept),
:mod:`broker.sip.delivery` (a verified delivery, redacted), :mod:`broker.sip.service` (the
app's context).
"""
