"""The domain: request lifecycle, F.A.I.R. policy, calendars; plus the publishing client, CLI and settings."""
