"""``python -m sdk.cli`` runs the ``fedge`` console script."""

from sdk.cli import main

main()
