"""Places providers for WHATSAT and venue suggestions.

Every provider answers in the shape of Google Places' legacy Nearby Search and never fails:
trouble becomes an answer with a Google error status (and a log line), so a WHATSAT always gets a
reply. `answers` holds that interface and format; `venue_files` reads the venue files; `index`
keeps GeoNames cities and file venues in SQLite; `offline` and `google` are the two providers;
`wiring` picks one from the config.
"""
