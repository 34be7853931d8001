"""The ``--json`` contract at its source: inside ``json_stdout()`` whatever is printed - by Python,
by native code on descriptor 1, by a child process - goes to stderr, and stdout receives exactly the
one JSON document, with null for non-finite values."""

from __future__ import annotations

import os
import subprocess
import sys

from launch.cli.output import json_stdout


def test_everything_but_the_document_goes_to_stderr(capfd):
    with json_stdout() as emit:
        print("a library banner")
        os.write(1, b"a native write to descriptor 1\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
        emit({"miou": float("nan"), "samples": 2})
    print("after the command", flush=True)  # stdout is restored, for Python and on descriptor 1
    os.write(1, b"descriptor 1 after\n")
    out, err = capfd.readouterr()
    assert out == '{"miou": null, "samples": 2}\nafter the command\ndescriptor 1 after\n'
    for line in ("a library banner", "a native write to descriptor 1", "a child process"):
        assert line in err
