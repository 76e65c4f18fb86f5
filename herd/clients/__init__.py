"""terminal clients for people: talk, chat, demo"""
