"""Demo worker: prints the time every two seconds."""

import time

n = 0
while True:
    n += 1
    print(f"tick {n} at {time.strftime('%H:%M:%S')}")
    time.sleep(2)
