#!/usr/bin/env python3
"""Drive a QMP server with the real `qemu.qmp` library, one step per stdin line.

    python3 tests/qmp/qmp_driver.py SOCKET

Prints the greeting as one JSON line, then for each request line prints one JSON line:

* {"cmd": NAME, "args": {...}}  -> the raw reply ({"return": ...} or {"error": ...})
* {"event": NAME, "timeout": S} -> the first event named NAME ({"timeout": true} if none came)
* {"events": S}                 -> every event that arrives within S seconds, as a list

Used by tests/tests/qmp_e2e.rs so the control socket is tested against the library existing
QMP tooling uses, not against a re-implementation of it.
"""
import json
import sys

from qemu.qmp.legacy import QEMUMonitorProtocol


def main():
    qmp = QEMUMonitorProtocol(sys.argv[1])
    greeting = qmp.connect(negotiate=True)
    print(json.dumps(greeting), flush=True)
    pending = []
    for line in sys.stdin:
        step = json.loads(line)
        if "cmd" in step:
            out = qmp.cmd_raw(step["cmd"], step.get("args"))
        elif "event" in step:
            out = {"timeout": True}
            found = next((e for e in pending if e["event"] == step["event"]), None)
            if found is not None:
                pending.remove(found)
                out = found
            else:
                while True:
                    try:
                        ev = qmp.pull_event(wait=step.get("timeout", 5.0))
                    except Exception:  # qemu.qmp raises on timeout
                        ev = None
                    if ev is None:
                        break
                    if ev["event"] == step["event"]:
                        out = ev
                        break
                    pending.append(ev)
        elif "events" in step:
            out = pending
            pending = []
            while True:
                try:
                    ev = qmp.pull_event(wait=step["events"])
                except Exception:
                    ev = None
                if ev is None:
                    break
                out.append(ev)
        else:
            out = {"driver-error": "unknown step"}
        print(json.dumps(out), flush=True)
    try:
        qmp.close()
    except EOFError:
        pass  # the server went away first (after `quit`), as QEMU does


if __name__ == "__main__":
    main()
