"""The head office web review (search, playback, notes, scorecards, export)."""
