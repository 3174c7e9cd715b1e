"""What a session leaves behind: its event log, transcript and token usage."""
