"""``python -m desktop`` (and the packaged app's entry point)."""

import multiprocessing
import os
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    # A windowed (frozen) build has no console: give print() somewhere harmless to go.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    # Before anything heavy is imported, so that even a broken bundle (a missing module, a library that
    # fails to load) leaves a traceback in the user's log directory instead of vanishing. (The self-test
    # keeps its log in its own temporary folder and reports on stderr.)
    if "--self-test" not in sys.argv:
        from desktop import crash
        from desktop.paths import data_dirs

        crash.install(data_dirs().logs)
    from desktop.app import main

    sys.exit(main())
