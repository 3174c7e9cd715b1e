"""Test helpers shared by the emulator's and the broker's suites."""
