import sys

from jacobix.cli.main import main

sys.exit(main())
