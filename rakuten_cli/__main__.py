import sys

from rakuten_cli.main import main

sys.exit(main())
