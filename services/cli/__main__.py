"""``python -m services.cli`` is ``argus``."""

from services.cli import main

main()
