"""Typer apps: argument handling only; every command calls a library function."""
