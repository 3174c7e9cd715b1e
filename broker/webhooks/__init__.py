"""The ``session.ended`` webhook: an outbox sender and the signature scheme."""
