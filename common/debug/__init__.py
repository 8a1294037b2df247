"""Debugging a failed attempt after the fact: its replay bundle, and running it again."""
