"""``python -m chat`` is ``chat-server``."""

import sys

from chat.cli.server import main

sys.exit(main())
