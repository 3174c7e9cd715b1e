"""Principals and credentials: API keys, client secrets, rate limits and stream caps."""
