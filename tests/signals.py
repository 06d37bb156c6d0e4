"""Interrupting a real ``onnx2burst`` process once it has reached a point it prints."""
from __future__ import annotations

import selectors
import subprocess
import time


def signal_when(p: subprocess.Popen, marker: str, sig, *, seconds: float = 120, wait: float = 120,
                delay: float = 0.0) -> tuple[int, str]:
    """Read ``p``'s stderr until ``marker`` shows, wait ``delay`` seconds more, send ``sig``, and
    wait for the end. Returns (exit code, everything it printed). ``p`` needs text-mode stdout
    and stderr pipes."""
    sel = selectors.DefaultSelector()
    sel.register(p.stderr, selectors.EVENT_READ)
    seen, deadline = "", time.monotonic() + seconds
    try:
        while marker not in seen and time.monotonic() < deadline and p.poll() is None:
            if sel.select(timeout=1):
                seen += p.stderr.readline()
        assert marker in seen and p.poll() is None, f"never reached {marker!r}: {seen!r}"
        time.sleep(delay)
        assert p.poll() is None, f"ended before the signal: {seen!r}"
        p.send_signal(sig)
        out, err = p.communicate(timeout=wait)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, seen + out + err
