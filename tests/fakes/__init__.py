"""Test doubles: synthetic result packages (packages.py) and a fake backend (backend/, run as python -m backend)."""
