"""Prints the greeting from .env every three seconds."""

import os
import time

while True:
    print(f"{os.environ.get('GREETING', 'hello')} (PORT={os.environ.get('PORT')})")
    time.sleep(3)
