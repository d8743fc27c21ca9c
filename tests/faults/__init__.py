"""Fault injection for every command that reads user files (issue 17): corrupt sources, full disks, lost
permissions, unreachable stores, signals; each run in a child process so that a crash is seen, not suffered."""
