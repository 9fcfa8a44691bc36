"""A small test runner for the Python checks of tests/run-python.

Runs every `test_*` function of the given modules in file order, prints one line per test, and
a closing `N passed, N failed` line (skips are reported separately and never count as passed).
Exits 1 when any test failed. Kept here instead of pytest so that CI needs nothing beyond the
packages scripts/install-deps installs.
"""

import importlib.util
import inspect
import pathlib
import sys
import time
import traceback


class Skip(Exception):
    """Raised by a test that cannot run here; the reason is printed."""


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def main(argv):
    only = None
    paths = []
    for arg in argv:
        if arg.startswith("-k="):
            only = arg[3:]
        else:
            paths.append(pathlib.Path(arg))
    # Test modules import this file as `runner`; catch that module's Skip, not __main__'s.
    import runner

    skip = runner.Skip
    passed = failed = skipped = 0
    for path in paths:
        module = load(path)
        tests = [
            (name, fn)
            for name, fn in vars(module).items()
            if name.startswith("test_") and inspect.isfunction(fn) and fn.__module__ == module.__name__
        ]
        tests.sort(key=lambda t: t[1].__code__.co_firstlineno)
        for name, fn in tests:
            if only and only not in name:
                continue
            label = f"{path.parent.name}/{path.name}::{name}"
            start = time.monotonic()
            try:
                fn()
            except skip as e:
                skipped += 1
                print(f"SKIP {label}: {e}", flush=True)
                continue
            except Exception:  # noqa: BLE001 - every failure is reported the same way
                failed += 1
                print(f"FAIL {label} ({time.monotonic() - start:.1f}s)", flush=True)
                print("     " + traceback.format_exc().replace("\n", "\n     "), flush=True)
                continue
            passed += 1
            print(f"ok   {label} ({time.monotonic() - start:.1f}s)", flush=True)
    if skipped:
        print(f"{skipped} skipped")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
