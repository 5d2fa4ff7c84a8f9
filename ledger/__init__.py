"""Domain rules (request lifecycle, F.A.I.R. policy, calendars), the publishing client,
CLI and configuration."""
