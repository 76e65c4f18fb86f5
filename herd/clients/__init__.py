"""Terminal clients for people: talk, chat, demo."""
