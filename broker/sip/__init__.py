"""Phone calls (SIP): the lines file and incoming calls.

:mod:`broker.sip.lines`, :mod:`broker.sip.calls`.
"""
