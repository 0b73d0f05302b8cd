"""``python -m bot`` runs the CLI."""

from bot.interfaces.cli import main

main()
