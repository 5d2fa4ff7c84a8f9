"""Pure domain rules: request lifecycle, F.A.I.R. policy, business calendar, refusals and
input parsing. No I/O, no clock, no settings; may import only `events`."""
