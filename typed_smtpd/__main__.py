"""``python -m typed_smtpd``: the same command line as ``typed-smtpd``."""

import sys

from typed_smtpd.main import main

if __name__ == "__main__":
    sys.exit(main())
