"""`python -m rlhf.rank`: the same as the `rlhf-rank` command."""

import sys

from rlhf.rank import main

sys.exit(main())
