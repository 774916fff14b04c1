"""Registers its command on the app in cli/main.py."""
