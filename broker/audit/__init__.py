"""The tamper-evident audit trail: signed, hash-chained records a reviewer verifies offline.

- :mod:`.records`: kinds, actors, the header each hash covers, the export line;
- :mod:`.canonical`: RFC 8785 canonical JSON (what is hashed);
- :mod:`.signing`: the Ed25519 keys;
- :mod:`.trail`: writing records (with their actions) and chaining them (one chainer per
  instance, batched under the head's lock), checkpoints, erasure;
- :mod:`.verify`: checking a chain (database or export) with public keys alone;
- :mod:`.redaction`: per-tool redacted fields (keyed hashes) and sealed arguments;
- :mod:`.export`: the export's lines (written, and read back strictly), database pages;
- :mod:`.cli` and :mod:`.report`: ``broker audit verify|export|public-key|checkpoint``.

What the trail proves, and against whom, is ``docs/audit.md``.
"""
